"""Video captioning: the video tower + a caption decoder, teacher forcing, decoding to strings.

Captions are tokenized with the text tower's BERT tokenizer, which already
frames them as [CLS] words [SEP]: [CLS] is the begin-of-sentence the decoder
starts from and [SEP] the end-of-sentence it learns to emit. Teacher
forcing: the decoder reads tokens 0..L-2 and predicts 1..L-1, padding
ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import Config
from vidmask.data import eval_loader, load_annotations
from vidmask.data.shard import gather_ordered, my_share
from vidmask.metrics.caption import caption_metrics
from vidmask.models.caption import CaptionDecoder, beam_search_ids, greedy_ids
from vidmask.models.video_text import VideoTextModel
from vidmask.tasks.base import EvalOption, Job, register_task


class CaptionTask(nn.Module):
    """forward(batch) -> ({"caption_loss"}, report) on a batch with "video" and "caption";
    greedy / beam_search -> strings."""

    def __init__(self, model: VideoTextModel, depth: int = 2, heads: int | None = None,
                 width: int | None = None, max_positions: int = 40):
        super().__init__()
        self.model = model
        self.tokenizer = model.text.tokenizer
        text_width = model.text.width
        width = width or text_width
        words = model.text.word_embeddings().weight  # (V, text_width)
        tok = self.tokenizer
        self.decoder = CaptionDecoder(
            vocab_size=words.shape[0], width=width, video_width=model.visual.dim,
            bos_id=tok.cls_token_id, eos_id=tok.sep_token_id, pad_id=tok.pad_token_id,
            depth=depth, heads=heads, max_positions=max_positions,
            # a pretrained tower's word vectors are a better start than noise; only when widths match
            word_embeddings=words if width == text_width else None,
        )

    def encode(self, video: Tensor) -> Tensor:
        """video [B,T,3,H,W] -> video tokens [B,K,C] for the decoder."""
        return self.model.video_tokens(video)  # (B, K, C)

    def forward(self, batch: dict, generator: torch.Generator | None = None):
        captions = batch["caption"]
        tokens = self.encode(batch["video"])  # (B, K, C)
        batch = self.tokenizer(captions, padding=True, truncation=True, max_length=self.decoder.max_positions,
                               return_tensors="pt")
        ids = batch["input_ids"].to(tokens.device)  # (B, L): [CLS] w1 .. wn [SEP] [PAD]..
        valid = batch["attention_mask"].to(tokens.device)  # (B, L)
        logits = self.decoder(ids[:, :-1], tokens, valid[:, :-1])  # (B, L-1, V)
        target = ids[:, 1:].masked_fill(valid[:, 1:] == 0, -100)  # (B, L-1): padding is not predicted
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100)
        return {"caption_loss": loss}, {"caption_tokens": (target != -100).sum()}  # a tensor until logged

    def decode(self, ids: Tensor) -> list[str]:
        """ids long[B,L] -> strings, special tokens ([CLS], [SEP], [PAD]) dropped."""
        return self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)

    @torch.no_grad()
    def greedy(self, video_tokens: Tensor, max_len: int = 20) -> list[str]:
        """video tokens [B,K,C] (from `encode`) -> B captions."""
        return self.decode(greedy_ids(self.decoder, video_tokens, max_len))

    @torch.no_grad()
    def beam_search(self, video_tokens: Tensor, beam: int = 3, max_len: int = 20,
                    length_penalty: float = 1.0) -> list[str]:
        """video tokens [B,K,C] -> B captions (batched beam search, see `beam_search_ids`)."""
        return self.decode(beam_search_ids(self.decoder, video_tokens, beam, max_len, length_penalty))


@torch.no_grad()
def evaluate_caption(cap: CaptionTask, items, cfg: Config, device) -> dict:
    """CIDEr, BLEU-4, ROUGE-L (and METEOR with Java) of captions generated for ``items``."""
    cap.eval()
    generated = []
    share = my_share(len(items))  # under torchrun each rank captions its share of the videos
    for batch in eval_loader([items[i] for i in share], cfg.data.num_frames, cfg.data.size, cfg.data.num_workers,
                             device=device):
        tokens = cap.encode(batch["video"])  # (b, K, C)
        if cfg.finetune.beam > 1:
            texts = cap.beam_search(tokens, beam=cfg.finetune.beam, max_len=cfg.finetune.max_len)
        else:
            texts = cap.greedy(tokens, max_len=cfg.finetune.max_len)
        generated += texts  # in the share's order: the loader does not shuffle
    cands = dict(enumerate(gather_ordered(generated, len(items))))
    refs = {i: it.captions for i, it in enumerate(items)}
    return {"n": len(items), **caption_metrics(cands, refs),
            "samples": [{"video": items[i].path.name, "generated": cands[i], "references": refs[i]}
                        for i in range(min(50, len(items)))]}


def caption_table(r: dict) -> str:
    names = [m for m in ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR") if m in r]
    return f"captioning on {r['n']} videos: " + ", ".join(f"{m} {r[m]:.2f}" for m in names)


@register_task("caption", help="video captioning: a text decoder with cross-attention to the video (MSVD style)",
               files=("train_caption.json", "test_caption.json"),
               eval_help="captioning CIDEr, BLEU-4, ROUGE-L (and METEOR with Java) via pycocoevalcap",
               eval_options=(EvalOption("--beam", "finetune.beam", "beam size (1 = greedy)"),))
def build_caption(cfg: Config, model: VideoTextModel, device, evaluating: bool = False) -> Job:
    # captioning reads the video tower only: the text tower, the retrieval projections and the temperature
    # are frozen, so DDP waits for no gradient of theirs
    for part in (model.text, model.vision_proj, model.text_proj):
        part.requires_grad_(False)
    model.logit_scale.requires_grad_(False)
    cap = CaptionTask(model).to(device)
    root = cfg.data.root()
    items = [] if evaluating else load_annotations(cfg.data.path(cfg.data.train_anno), root=root)
    test = load_annotations(cfg.data.path(cfg.data.test_anno), root=root, unique=True, nonempty=True)
    return Job(task=cap, model=model, items=items, table=caption_table,
               evaluate=lambda: evaluate_caption(cap, test, cfg, device),
               short=lambda r: {"eval_CIDEr": r["CIDEr"]}, result_file="eval_caption.json", masked=False)
