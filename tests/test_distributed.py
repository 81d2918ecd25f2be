"""The contrastive loss over 2 gloo processes equals the loss of one process on the whole batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vidmask.objectives import vtc_loss


def _worker(rank, world, port, v, t, out, split, ids):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    lo, hi = split[rank], split[rank + 1]
    vl = v[lo:hi].clone().requires_grad_(True)
    tl = t[lo:hi].clone().requires_grad_(True)
    loss = vtc_loss(vl, tl, torch.tensor(5.0), pair_ids=None if ids is None else ids[lo:hi])["vtc_loss"]
    # each rank's loss is a mean over its rows; weighting by the row share gives the global mean
    (loss * (hi - lo) / v.shape[0]).backward()
    out[rank] = torch.cat([loss.detach().view(1), vl.grad.flatten(), tl.grad.flatten()])
    dist.barrier()
    dist.destroy_process_group()


import pytest


# equal, and unequal (bad samples dropped) batches; videos repeated across the two ranks (same-video positives)
@pytest.mark.parametrize("split", [(0, 3, 6), (0, 2, 6)])
@pytest.mark.parametrize("ids", [None, (7, 1, 2, 7, 4, 2)])
def test_gathered_vtc_equals_single_process(split, ids):
    ids = None if ids is None else torch.tensor(ids)
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, v, t, out, split, ids), nprocs=2, join=True)
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
