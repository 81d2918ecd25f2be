"""Frozen caption features kept by caption, at most ``capacity`` of them, least recently used dropped first.

A frozen text tower gives a caption the same features every time, so they are
computed once and reused: by the student's frozen tower (``model.text``) and
by lit-effnet's frozen MiniLM (the ``relevance`` objective's captions, every
step). A dict with every caption ever seen grows with the data set (WebVid's
10M captions x 384 float32 = 15 GB on every rank); this one stops at
``capacity`` (``model.text.cache_captions``) and then drops the caption
used longest ago, so memory is bounded and a data set that fits is still
encoded once. :func:`cached_features` is the whole policy: look up what is
held, encode every miss of the call in one batch, remember it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor


class CaptionCache:
    """caption -> float32[W] on the CPU, bounded by ``capacity`` entries (0 = hold nothing)."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"a caption cache's capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._held: OrderedDict[str, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, caption: str) -> bool:
        return caption in self._held

    def missing(self, captions: Iterable[str]) -> Iterator[str]:
        """The distinct captions of ``captions`` not held, in first-seen order, lazily: ``captions`` is read
        no further than the caller asks (a warm-up of 200k captions does not list 10M)."""
        seen: set[str] = set()
        for c in captions:
            if c not in seen and c not in self._held:
                seen.add(c)
                yield c

    def get(self, caption: str) -> Tensor | None:
        """The held features of ``caption`` (now the most recently used), or None."""
        feat = self._held.get(caption)
        if feat is not None:
            self._held.move_to_end(caption)
        return feat

    def put(self, captions: list[str], feats: Tensor) -> None:
        """Remember ``feats`` float[b,W] of ``captions`` (b of them), dropping the least recently used past
        ``capacity``."""
        if not self.capacity:
            return
        for caption, feat in zip(captions, feats.detach().float().cpu()):  # (W,) each
            self._held[caption] = feat
            self._held.move_to_end(caption)
        while len(self._held) > self.capacity:
            self._held.popitem(last=False)


def cached_features(cache: CaptionCache, captions: list[str], encode: Callable[[list[str]], Tensor],
                    chunk: int = 256) -> Tensor:
    """Features float32[B,W] (CPU) of ``captions``: the held ones, and the misses encoded together by
    ``encode(list of b str) -> [b,W]`` (``chunk`` at a time), then remembered. Correct whatever the
    capacity: a batch with more distinct captions than the cache holds still gets every one."""
    found = {c: f for c in dict.fromkeys(captions) if (f := cache.get(c)) is not None}  # read before any put
    todo = sorted(c for c in dict.fromkeys(captions) if c not in found)  # sorted: batches whatever the order
    for s in range(0, len(todo), chunk):
        part = todo[s : s + chunk]
        feats = encode(part).detach().float().cpu()  # (b, W)
        found.update(zip(part, feats))
        cache.put(part, feats)
    return torch.stack([found[c] for c in captions])  # (B, W)
