"""The contrastive loss over 2 gloo processes equals the loss of one process on the whole batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vidmask.objectives import vtc_loss


def _worker(rank, world, port, v, t, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = v.shape[0] // world
    vl = v[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    tl = t[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    loss = vtc_loss(vl, tl, torch.tensor(5.0))["vtc_loss"]
    # DDP averages gradients over ranks; the mean of local losses is the global loss
    (loss / world).backward()
    out[rank] = torch.cat([loss.detach().view(1), vl.grad.flatten(), tl.grad.flatten()])
    dist.barrier()
    dist.destroy_process_group()


def test_gathered_vtc_equals_single_process():
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, v, t, out), nprocs=2, join=True)
    vg, tg = v.clone().requires_grad_(True), t.clone().requires_grad_(True)
    ref = vtc_loss(vg, tg, torch.tensor(5.0))["vtc_loss"]
    ref.backward()
    losses = torch.stack([out[0][0], out[1][0]])
    assert torch.allclose(losses.mean(), ref, atol=1e-6)
    for r in range(2):
        g = out[r][1:]
        assert torch.allclose(g[:12].view(3, 4), vg.grad[3 * r : 3 * r + 3], atol=1e-6)
        assert torch.allclose(g[12:].view(3, 4), tg.grad[3 * r : 3 * r + 3], atol=1e-6)
