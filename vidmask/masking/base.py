"""The one mask contract every strategy follows.

A masker maps visual tokens ``float[B,T,N,C]`` (N tokens per frame) to a
:class:`MaskOut` whose ``keep`` is ``bool[B,T,N]``: **True means the encoder
sees the token**. Nothing in vidmask is named a bare ``mask``, because the
field disagrees on what True means (MAE: 1 = removed; the ClusterSTM
pseudocode: True = masked; UMT: ``~mask`` = visible).

Two ways to apply a mask:

* ``drop``: the encoder runs on the kept tokens only. This needs the same
  number of kept tokens in every clip of the batch (per frame for most
  strategies), so the tokens can be gathered into a dense ``[B, K, C]``.
* ``replace``: masked patches are erased (MASCOT fills them with random
  pixels) and every token is still encoded.

A strategy is a pure function of tensors; the registered object only holds
hyper-parameters (``stm`` and ``stm-guided`` are the exceptions: they have
learnable weights). Randomness comes only from the explicit ``generator``;
tensors are made on the input's device; masks are computed in float32 even
under autocast.

What a strategy ranks and what the encoder does with its mask are class
attributes: ``inputs`` (the teacher's output tokens, or its patch embeddings
before the transformer, which ``stm`` reads) and ``video_text_set`` (the
video-text objectives vtc, vtm and mlm read the kept tokens, one encoder
pass; or, for ``stm``, the complementary masked set, encoded in a second
pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from vidmask.tokens import gather_tokens  # noqa: F401  (re-exported: the gather that goes with ids_keep)

Mode = Literal["drop", "replace"]
Inputs = Literal["features", "patch_embeds"]
VideoTextSet = Literal["kept", "masked"]


@dataclass
class MaskOut:
    """What a masker returns.

    keep: bool[B,T,N], True = the encoder sees the token.
    ids_keep: long[B,K], flat indices into L = T*N of the kept tokens, sorted
        ascending, K identical for every clip (None when the strategy cannot
        guarantee a fixed count, i.e. ``replace`` only).
    saliency: optional float[B,T,N] the strategy ranked by (attention,
        temporal density), for pictures.
    clusters: optional long[B,T,N] cluster id of every token within its frame.
    token_weight: optional float[B,K] aligned with ``ids_keep``, from a learnable
        strategy (``stm``, ``stm-guided``): 1.0 in the forward pass, carrying the
        gradient of a soft top-k backward. The encoder multiplies it onto the kept
        tokens, so the task's loss reaches the strategy's parameters.
    masked_weight: optional float[B,L-K] aligned with ``keep_to_ids(~keep)`` (the
        masked tokens, ascending), the same straight-through weight for the masked
        set, from a strategy whose masked set is encoded too
        (``video_text_set = "masked"``: ``stm``'s second pass).
    extra: anything else a strategy exposes (e.g. MASCOT's interval).
    """

    keep: Tensor
    ids_keep: Tensor | None = None
    saliency: Tensor | None = None
    clusters: Tensor | None = None
    token_weight: Tensor | None = None
    masked_weight: Tensor | None = None
    extra: dict | None = None

    @property
    def num_kept(self) -> int:
        """Kept tokens per clip (asserted equal across the batch)."""
        counts = self.keep.flatten(1).sum(1)  # (B,)
        if counts.numel() and not bool((counts == counts[0]).all()):
            raise ValueError(f"kept count differs across the batch: {counts.tolist()}")
        return int(counts[0]) if counts.numel() else 0


def keep_to_ids(keep: Tensor, count: int | None = None) -> Tensor:
    """Flat, ascending indices of kept tokens: bool[B,T,N] -> long[B,K].

    Without ``count`` the clips' counts are read back (one host sync on an accelerator) and must be
    equal, instead of trusting ``x[keep].reshape(B, -1, C)`` to line up. ``count``: K, when the
    strategy keeps a fixed number per clip by construction (a top-k or one token per cluster in
    every frame: ``T * per_frame``); then nothing is read back, and the registry's contract test
    checks every strategy's ids against the counted path.
    """
    B = keep.shape[0]
    flat = keep.reshape(B, -1)  # (B, L)
    if count is None:
        counts = flat.sum(1)  # (B,)
        if B and not bool((counts == counts[0]).all()):
            raise ValueError(f"drop mode needs the same kept count in every clip, got {counts.tolist()}")
        count = int(counts[0]) if B else 0
    # a stable sort of ~keep puts kept positions first, in ascending order
    order = torch.argsort((~flat).to(torch.int8), dim=1, stable=True)  # (B, L)
    return order[:, :count]  # (B, K)


def topk_keep(score: Tensor, k: int) -> Tensor:
    """bool mask of the k highest scores along the last dim; ties to the lowest index.

    score: float[..., N] -> bool[..., N] with exactly k True per row.
    """
    N = score.shape[-1]
    k = max(0, min(int(k), N))
    # stable descending sort keeps equal scores in index order
    order = torch.argsort(score, dim=-1, descending=True, stable=True)  # (..., N)
    keep = torch.zeros_like(score, dtype=torch.bool)  # (..., N)
    keep.scatter_(-1, order[..., :k], True)
    return keep


def kept_per_frame(num_tokens: int, ratio: float) -> int:
    """Tokens each frame keeps at mask ratio `ratio`: round(N * (1 - ratio)), at least 1.

    The rounding rule of the per-frame strategies (random, tube, umt, stm-guided);
    each masker states its own count through :meth:`Masker.kept_per_frame`."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return max(1, int(round(num_tokens * (1.0 - ratio))))


class Masker:
    """Base of registered strategies: holds hyper-parameters, no hidden state.

    Subclasses set ``name``, ``modes`` (the apply modes they support),
    ``needs_attn`` and ``stochastic`` (False when the mask is a function of the
    inputs alone and ignores ``generator``), and implement ``__call__``; the
    attributes below them default to what every strategy but ``stm`` does.
    """

    name: str = ""
    modes: tuple[Mode, ...] = ("drop", "replace")
    needs_attn: bool = False
    stochastic: bool = True
    fixed_ratio: float | None = None  # a strategy that only works at one ratio (`none`: 0) states it
    # what `tokens` is (vidmask.masking.inputs): "features", the teacher's output tokens (pixel tokens
    # without one); "patch_embeds", its patch embeddings before the transformer (raw pixel patches where
    # the teacher has none)
    inputs: Inputs = "features"
    # which tokens the video-text objectives (vtc, vtm, mlm) read: "kept" (one encoder pass) or "masked"
    # (the complementary set, encoded in a second pass: STM)
    video_text_set: VideoTextSet = "kept"
    needs_grid: bool = False  # it convolves over each frame's square token grid (N = side * side, side >= 4)
    # parameter-name prefix (inside the masker) -> learning-rate multiplier, for a learnable strategy
    lr_scales: dict[str, float] = {}

    def __init__(self, ratio: float = 0.75):
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"{self.name}: mask ratio must be in [0, 1), got {ratio}")
        self.ratio = float(ratio)

    def __call__(
        self, tokens: Tensor, *, attn: Tensor | None = None, generator: torch.Generator | None = None
    ) -> MaskOut:  # pragma: no cover - abstract
        raise NotImplementedError

    def kept_per_frame(self, num_tokens: int) -> int | None:
        """Tokens every frame keeps out of ``num_tokens``, or None when the strategy
        promises a count per clip only (MASCOT's tube over an interval). The default
        is :func:`kept_per_frame`'s rounding; a strategy with another rule overrides it."""
        return kept_per_frame(num_tokens, self.ratio)

    def kept_ids(self, keep: Tensor) -> Tensor:
        """:func:`keep_to_ids` of this strategy's mask with the count it keeps by construction
        (``T * kept_per_frame``): nothing read back from the device. A strategy without a count per
        frame (None) has its clips' counts read and checked. bool[B,T,N] -> long[B,K]."""
        per_frame = self.kept_per_frame(keep.shape[2])
        return keep_to_ids(keep, None if per_frame is None else keep.shape[1] * per_frame)  # (B, K)

    def _check(self, tokens: Tensor, attn: Tensor | None) -> None:
        if tokens.dim() != 4:
            raise ValueError(f"{self.name}: tokens must be [B,T,N,C], got {tuple(tokens.shape)}")
        if self.needs_attn and attn is None:
            raise ValueError(f"{self.name}: needs `attn` [B,T,N] (a teacher's CLS-to-patch attention)")
        if attn is not None and attn.shape != tokens.shape[:3]:
            raise ValueError(f"{self.name}: attn must be {tuple(tokens.shape[:3])}, got {tuple(attn.shape)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio={self.ratio})"


_REGISTRY: dict[str, Callable[..., Masker]] = {}


def register(name: str):
    """Class decorator: register a strategy under an exact name."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"masker {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_maskers() -> list[str]:
    return sorted(_REGISTRY)


def masker_class(name: str) -> Callable[..., Masker]:
    """The registered class of strategy ``name`` (KeyError listing the known ones)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown mask strategy {name!r}; known: {', '.join(list_maskers())}")
    return _REGISTRY[name]


def strategy_ratio(name: str, ratio: float) -> float:
    """The ratio to build strategy ``name`` with: its fixed ratio if it has one, else ``ratio``."""
    fixed = _REGISTRY[name].fixed_ratio if name in _REGISTRY else None
    return ratio if fixed is None else fixed


# What the run supplies to a strategy that asks for it (never set by a user in mask.params)
SUPPLIED = ("token_dim",)


def _signature(name: str) -> list[str]:
    import inspect

    return [p for p in inspect.signature(_REGISTRY[name].__init__).parameters if p not in ("self", "ratio")]


def masker_params(name: str) -> list[str]:
    """The keyword parameters a user may give strategy ``name`` besides ``ratio``."""
    return [p for p in _signature(name) if p not in SUPPLIED]


def build_masker(name: str, ratio: float = 0.75, *, token_dim: int | None = None, **params) -> Masker:
    """Look a strategy up by its exact name and build it.

    ``token_dim``: channels C of the tokens the strategy will see, passed to
    strategies that take it (a learnable one sizes its weights by it).
    KeyError for an unknown name, TypeError for a parameter the strategy
    does not take; both messages list what is valid.
    """
    masker_class(name)  # a KeyError for an unknown name
    unknown = sorted(set(params) - set(masker_params(name)))
    if unknown:
        raise TypeError(f"mask strategy {name!r} takes no parameter {', '.join(unknown)}; "
                        f"it takes: {', '.join(masker_params(name)) or 'none besides the ratio'}")
    if "token_dim" in _signature(name):
        if token_dim is None:
            raise TypeError(f"mask strategy {name!r} needs token_dim (the channels of the tokens it sees)")
        params["token_dim"] = token_dim
    return _REGISTRY[name](ratio=ratio, **params)
