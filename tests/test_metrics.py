"""Retrieval metrics against a slow, obvious reference (ties, several captions per video)."""

import statistics

import numpy as np
import pytest
import torch

from vidmask.metrics import dual_softmax, retrieval_metrics, twin_accuracy


def reference(sim, t2v):
    sim = sim.tolist()
    t2v = t2v.tolist()
    nt, nv = len(sim), len(sim[0])
    t_ranks = []
    for i in range(nt):
        truth = sim[i][t2v[i]]
        t_ranks.append(1 + sum(1 for j in range(nv) if sim[i][j] > truth))
    v_ranks = []
    for v in range(nv):
        best = None
        for i in range(nt):
            if t2v[i] != v:
                continue
            r = 1 + sum(1 for k in range(nt) if sim[k][v] > sim[i][v])
            best = r if best is None else min(best, r)
        v_ranks.append(best)

    def summ(r):
        return {
            "R@1": 100.0 * sum(x <= 1 for x in r) / len(r),
            "R@5": 100.0 * sum(x <= 5 for x in r) / len(r),
            "R@10": 100.0 * sum(x <= 10 for x in r) / len(r),
            "MdR": statistics.median(r),  # mean of the two middle values, as numpy
            "MnR": sum(r) / len(r),
        }

    a, b = summ(t_ranks), summ(v_ranks)
    return {"t2v": a, "v2t": b, "rsum": sum(d[k] for d in (a, b) for k in ("R@1", "R@5", "R@10"))}


def assert_close(got, want):
    for side in ("t2v", "v2t"):
        for k, v in want[side].items():
            assert got[side][k] == pytest.approx(v, abs=1e-9), (side, k)
    assert got["rsum"] == pytest.approx(want["rsum"], abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_with_ties_and_multi_caption(seed):
    g = torch.Generator().manual_seed(seed)
    nv = 7 + seed * 3
    caps = torch.randint(1, 4, (nv,), generator=g)  # 1..3 captions per video
    t2v = torch.repeat_interleave(torch.arange(nv), caps)
    t2v = t2v[torch.randperm(len(t2v), generator=g)]
    # coarse values guarantee many ties
    sim = torch.randint(0, 4, (len(t2v), nv), generator=g).float()
    assert_close(retrieval_metrics(sim, t2v), reference(sim, t2v))


def test_even_count_median_is_numpys():
    # t2v ranks 1 and 2 -> numpy median 1.5 (torch.median would say 1)
    sim = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    out = retrieval_metrics(sim, torch.tensor([0, 1]))
    assert out["t2v"]["MdR"] == 1.5 == float(np.median([1, 2]))


def test_perfect_and_ties_not_penalised():
    sim = torch.eye(5)
    out = retrieval_metrics(sim, torch.arange(5))
    assert out["t2v"]["R@1"] == 100.0 and out["v2t"]["MnR"] == 1.0
    # all scores equal: nobody scores strictly higher, so every rank is 1
    out = retrieval_metrics(torch.zeros(4, 4), torch.arange(4))
    assert out["t2v"]["R@1"] == 100.0


def test_bad_inputs():
    with pytest.raises(ValueError):
        retrieval_metrics(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([0, 1]))  # video 2 has no caption


def test_dual_softmax_reweights_over_texts():
    sim = torch.tensor([[1.0, 0.9], [0.95, 0.1]])
    out = dual_softmax(sim, temperature=10.0)
    prior = torch.softmax(sim * 10.0, dim=0)
    assert torch.allclose(out, sim * prior)
    # text 0 loves both videos, so the prior on video 0 shifts toward text 1
    assert out[1, 0] > out[0, 0] * 0.5


def test_twin_accuracy():
    # videos 0 and 1 are motion twins; captions 0,1 -> video 0; caption 2 -> video 1
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.0], [0.5, 0.5, 0.0]])
    out = twin_accuracy(sim, torch.tensor([0, 0, 1]), [(0, 1, "motion")])
    # caption 0 wins, caption 1 loses, caption 2 ties (a tie is not a win)
    assert out["motion"] == pytest.approx(100.0 / 3)
    assert out["motion_n"] == 3
