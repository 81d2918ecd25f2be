"""The contrastive loss over 2 gloo processes equals the loss of one process on the whole batch."""

import torch

from helpers.gloo import run_ranks
from vidmask.objectives import vtc_loss


def _worker(rank, world, v, t, split, ids, known, out):
    from torch.utils._python_dispatch import TorchDispatchMode

    from vidmask.objectives.vtc import known_rank_sizes

    class Reads(TorchDispatchMode):  # reads of a tensor value back to the host (.item(), int())
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Reads.n += func.overloadpacket.__name__ == "_local_scalar_dense"
            return func(*args, **(kwargs or {}))

    lo, hi = split[rank], split[rank + 1]
    vl = v[lo:hi].clone().requires_grad_(True)
    tl = t[lo:hi].clone().requires_grad_(True)
    sizes = [split[r + 1] - split[r] for r in range(world)] if known else None  # what the step's agreement knows
    with known_rank_sizes(sizes), Reads():
        loss = vtc_loss(vl, tl, torch.tensor(5.0), pair_ids=None if ids is None else ids[lo:hi])["vtc_loss"]
    out[f"reads{rank}"] = Reads.n
    # each rank's loss is a mean over its rows; weighting by the row share gives the global mean
    (loss * (hi - lo) / v.shape[0]).backward()
    out[rank] = torch.cat([loss.detach().view(1), vl.grad.flatten(), tl.grad.flatten()])


import pytest


# equal, and unequal (bad samples dropped) batches; videos repeated across the two ranks (same-video positives)
@pytest.mark.parametrize("split", [(0, 3, 6), (0, 2, 6)])
@pytest.mark.parametrize("ids", [None, (7, 1, 2, 7, 4, 2)])
@pytest.mark.parametrize("known", [False, True])  # rank sizes gathered by the loss, or known from the step
def test_gathered_vtc_equals_single_process(split, ids, known):
    ids = None if ids is None else torch.tensor(ids)
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    out = run_ranks(_worker, v, t, split, ids, known)
    if known:  # the counts came from the step: nothing read back (without them: one read per rank's count)
        assert out["reads0"] == out["reads1"] == 0
    else:
        assert out["reads0"] >= 2
    vg, tg = v.clone().requires_grad_(True), t.clone().requires_grad_(True)
    ref = vtc_loss(vg, tg, torch.tensor(5.0), pair_ids=ids)["vtc_loss"]
    ref.backward()
    sizes = [split[1] - split[0], split[2] - split[1]]
    losses = torch.stack([out[0][0], out[1][0]])
    assert torch.allclose((losses * torch.tensor(sizes)).sum() / 6, ref, atol=1e-6)
    for r in range(2):
        g, n, lo = out[r][1:], sizes[r], split[r]
        assert torch.allclose(g[: n * 4].view(n, 4), vg.grad[lo : lo + n], atol=1e-6)
        assert torch.allclose(g[n * 4 :].view(n, 4), tg.grad[lo : lo + n], atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_asking_for_cuda_without_one_is_a_config_error():
    from vidmask.config import ConfigError
    from vidmask.train.distributed import pick_device

    with pytest.raises(ConfigError, match="train.device=cuda but no CUDA device"):
        pick_device("cuda", 0)
    assert pick_device("auto", 0).type == "cpu"


def _gather_worker(rank, world, n, out):
    from vidmask.data.shard import gather_ordered, my_share

    share = my_share(n)  # (n/world,) this rank's items
    batch = torch.arange(n * 1000, dtype=torch.float32).view(n, 1000)[share]  # (n/world, 1000): one eval batch
    rows = list(batch)  # views into the batch's storage, as the evaluations collect them
    pairs = [(r, r[:3]) for r in rows]  # and rows inside tuples (MASCOT's wti sets)
    out[rank] = (gather_ordered(rows, n), gather_ordered(pairs, n))
    from vidmask.objectives.vtc import known_rank_sizes, rank_sizes

    with known_rank_sizes([1, 1]):  # counts that do not describe this rank's rows: named, not gathered
        try:
            rank_sizes(3, torch.device("cpu"))
        except ValueError as e:
            out[f"mismatch{rank}"] = str(e)


def test_gather_ordered_puts_every_ranks_rows_in_item_order_and_sends_only_the_rows():
    """Pickling a view writes its whole storage: each gathered row must be a tensor of its own size."""
    import pickle

    from vidmask.data.shard import compact

    n = 6
    out = run_ranks(_gather_worker, n)
    want = torch.arange(n * 1000, dtype=torch.float32).view(n, 1000)  # (n, 1000)
    assert "do not match the 3 rows" in out["mismatch0"] and "rank 1" in out["mismatch1"]
    for r in range(2):
        rows, pairs = out[r]
        assert torch.equal(torch.stack(rows), want)
        assert torch.equal(torch.stack([b for _, b in pairs]), want[:, :3])
    batch = torch.randn(64, 1000)
    views = list(batch)  # 64 x (1000,) views of one 256 kB storage
    assert len(pickle.dumps(views)) > 60 * batch.nbytes  # what all_gather_object would have sent
    assert len(pickle.dumps(compact(views))) < 1.2 * batch.nbytes
    assert all(torch.equal(a, b) for a, b in zip(compact(views), views))
    assert compact({"a": (views[0], "x")})["a"][1] == "x"


def _late_worker(rank, world, out):
    import time

    from vidmask.train.distributed import wait_for_ranks

    if rank == 0:
        t0 = time.time()
        try:
            wait_for_ranks("the test's cache", 0.05)  # 3 s
            out[0] = "no error"
        except RuntimeError as e:
            out[0] = str(e)
        out["waited"] = time.time() - t0
    else:
        time.sleep(8)  # still building the cache when rank 0 gives up
        out[1] = "late"


def test_a_rank_that_does_not_arrive_in_time_is_named_with_the_key_to_raise():
    out = run_ranks(_late_worker, barrier=False)
    message = out[0]
    assert "waited for the other ranks to finish the test's cache" in message, message
    assert "train.dist_timeout_min=0.05" in message and "Rank 1 failed to pass" in message, message  # names it
    assert out["waited"] < 7 and out[1] == "late"
