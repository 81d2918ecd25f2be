"""Hard-negative batch composition: caption neighbours against brute force; the paired order."""

from __future__ import annotations

import numpy as np
import torch

from vidmask.data.neighbours import caption_neighbours, paired_order


def test_caption_neighbours_equal_brute_force():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(37, 6, generator=g)
    feats[5] = feats[9] * 2.0  # a tie in cosine with different norms
    got = caption_neighbours(feats, k=3, block=8)  # blocks smaller than n
    unit = torch.nn.functional.normalize(feats, dim=-1)
    for i in range(37):
        sims = [(float(unit[i] @ unit[j]), -j, j) for j in range(37) if j != i]
        want = [j for _, _, j in sorted(sims, reverse=True)[:3]]
        assert got[i].tolist() == want, i
    assert got[5][0] == 9 and got[9][0] == 5


def test_paired_order_places_every_clip_once_beside_a_neighbour():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(50, 8, generator=g)
    nb = caption_neighbours(feats, k=4)
    perm = torch.randperm(50, generator=g).tolist()
    order = paired_order(perm, nb)
    assert sorted(order) == list(range(50))
    # the first clip of the permutation leads, followed by its nearest caption's clip
    assert order[0] == perm[0] and order[1] == nb[perm[0]][0]
    pairs = sum(1 for p in range(len(order) - 1) if order[p + 1] in nb[order[p]])
    assert pairs >= 20  # most clips sit beside one of their 4 nearest captions' clips


def test_twin_captions_are_each_others_nearest(tmp_path):
    """With the real text tower, captions that differ only in the direction are nearest neighbours."""
    from vidmask.config import TextConfig
    from vidmask.models.text import TextEncoder

    text = TextEncoder(TextConfig())
    caps = ["a red circle moves left", "a red circle moves right", "a blue star spins", "a blue star spins fast",
            "a green square moves up", "a green square moves down", "a yellow triangle rests",
            "a purple heart bounces"]
    nb = caption_neighbours(text(caps), k=1)
    assert nb[0, 0] == 1 and nb[1, 0] == 0 and nb[4, 0] == 5 and nb[5, 0] == 4
    assert np.all(nb[:, 0] != np.arange(8))


def test_epoch_batches_with_neighbours_split_ranks_disjointly():
    from vidmask.train.schedule import epoch_batches

    nb = caption_neighbours(torch.randn(40, 5, generator=torch.Generator().manual_seed(2)), k=3)
    ranks = [epoch_batches(40, 4, seed=0, epoch=1, rank=r, world=2, neighbours=nb) for r in range(2)]
    seen = [i for batches in ranks for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 40  # every clip once per epoch, on one rank
    assert ranks[0] == epoch_batches(40, 4, seed=0, epoch=1, rank=0, world=2, neighbours=nb)  # deterministic
    together = sum(1 for batches in ranks for b in batches for i, j in zip(b, b[1:]) if j in nb[i])
    assert together >= 12  # neighbours sit side by side in a rank's batch


def test_hard_batches_train_and_resume_exactly(tiny_set, tmp_path):
    import os
    import signal

    from test_train import KILL_COMMON, losses, start_and_wait, vidmask

    full = tmp_path / "full"
    vidmask("pretrain", f"data.corpus={tiny_set}", *KILL_COMMON, "train.hard_batches=2", f"run_dir={full}")
    assert np.load(full / "neighbours.npy").shape == (16, 2)
    killed = tmp_path / "killed"
    proc = start_and_wait(tiny_set, killed, 9, "train.hard_batches=2")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at = int((killed / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert at < 24
    vidmask("pretrain", "--resume", str(killed))
    a, b = losses(full), losses(killed)
    for step in range(at + 1, 25):
        assert b[step] == a[step], step  # the same batches after the resume
