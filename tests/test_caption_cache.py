"""Frozen caption features: a bounded LRU, one encoder call per batch for its misses, a warm-up shared by ranks."""

from __future__ import annotations

import itertools

import pytest
import torch

from helpers.gloo import run_ranks
from vidmask.config import TextConfig
from vidmask.models.caption_cache import CaptionCache, cached_features
from vidmask.models.text import TextEncoder


class Counting:
    """An encoder of captions to [len, 1] features that records the batches it was called with."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, captions: list[str]) -> torch.Tensor:
        self.calls.append(list(captions))
        return torch.tensor([[float(len(c))] for c in captions])  # (b, 1)


def test_misses_are_encoded_once_in_one_call_and_the_cache_stays_bounded():
    cache, enc = CaptionCache(3), Counting()
    out = cached_features(cache, ["aa", "b", "aa", "cccc"], enc)
    assert out.tolist() == [[2.0], [1.0], [2.0], [4.0]] and enc.calls == [["aa", "b", "cccc"]]
    cached_features(cache, ["b", "aa"], enc)
    assert len(enc.calls) == 1  # all held: no encoder call
    cached_features(cache, ["ddd", "b"], enc)  # "cccc" is the least recently used: dropped
    assert enc.calls[-1] == ["ddd"] and len(cache) == 3 and "cccc" not in cache and "aa" in cache
    # a batch with more distinct captions than the cache holds still gets every feature, in one call
    out = cached_features(cache, ["w", "xx", "yyy", "zzzz", "b"], enc)
    assert out.flatten().tolist() == [1.0, 2.0, 3.0, 4.0, 1.0] and enc.calls[-1] == ["w", "xx", "yyy", "zzzz"]
    assert len(cache) == 3
    nothing = CaptionCache(0)
    cached_features(nothing, ["a"], enc)
    cached_features(nothing, ["a"], enc)
    assert len(nothing) == 0 and enc.calls[-2:] == [["a"], ["a"]]  # 0: encoded every time
    with pytest.raises(ValueError):
        CaptionCache(-1)


def test_the_frozen_tower_keeps_at_most_cache_captions():
    torch.manual_seed(0)
    text = TextEncoder(TextConfig(init="random", cache_captions=4))
    captions = [f"caption number {i}" for i in range(6)]
    text.warm_cache(captions)
    assert len(text._cache) == 4  # the first 4, sorted
    full = TextEncoder(TextConfig(init="random"))
    full.load_state_dict(text.state_dict())
    torch.testing.assert_close(text(captions), full(captions))  # evicted or not, the same features
    assert len(text._cache) == 4


def test_the_warm_up_reads_no_further_than_the_captions_it_keeps():
    text = TextEncoder(TextConfig(init="random", cache_captions=3))
    read = []

    def corpus():  # endless, like a caption column too large to list
        for i in itertools.count():
            read.append(i)
            yield "a clip" if i < 2 else f"a clip of thing {i}"

    text.warm_cache(corpus())
    assert len(read) == 4 and len(text._cache) == 3  # "a clip" twice, then two more distinct captions


def _warm_rank(rank, world, captions, out):
    import torch.distributed as dist

    from vidmask.train.distributed import all_gather_rows

    torch.manual_seed(0)
    text = TextEncoder(TextConfig(init="random"))
    encoded = []
    pooled = text.encode_frozen
    text.encode_frozen = lambda c: encoded.extend(c) or pooled(c)
    text.warm_cache(captions, rank=rank, world=world, gather=all_gather_rows)
    out[rank] = (encoded, {c: text._cache.get(c) for c in captions})


def test_two_ranks_warm_the_cache_each_its_share():
    captions = [f"a clip of thing {i}" for i in range(7)] * 2
    out = run_ranks(_warm_rank, captions)
    todo = sorted(set(captions))
    assert out[0][0] == todo[:3] and out[1][0] == todo[3:]  # each rank encoded its contiguous share only
    torch.manual_seed(0)
    one = TextEncoder(TextConfig(init="random"))
    one.warm_cache(captions)
    for rank in (0, 1):
        for c in todo:
            torch.testing.assert_close(out[rank][1][c], one._cache.get(c))
