"""DistributedDataParallel over gloo, 2 CPU processes, training a converted model: the same parameters as a
single-process run on the whole batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dlkernels.nn as dnn

STEPS, BATCH = 3, 8


def build_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 3),
    )
    return dnn.convert(model)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, BATCH, 1, 8, 8, generator=g), torch.randint(0, 3, (STEPS, BATCH), generator=g)


def train(model, xs, ys):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in zip(xs, ys):
        optimizer.zero_grad()
        # Mean over the local batch: DDP averages the gradients over the ranks, which equals the mean over
        # the whole batch since both halves have the same size.
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _worker(rank, world_size, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model = nn.parallel.DistributedDataParallel(build_model())
        xs, ys = data()
        half = BATCH // world_size
        train(model, xs[:, rank * half:(rank + 1) * half], ys[:, rank * half:(rank + 1) * half])
        torch.save(model.module.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_gloo_two_processes_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    single = build_model()
    assert isinstance(single[0], dnn.Conv2d) and single[0].activation == "relu" and isinstance(single[4], dnn.Linear)
    train(single, *data())
    expected = single.state_dict()
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert list(state) == list(expected)
        for key in expected:
            # float32: the allreduce sums the two half-batch gradients in another order than one full-batch
            # backward, so the parameters differ by rounding (~1e-7 relative) after a few steps.
            torch.testing.assert_close(
                state[key], expected[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"rank {rank}, {key}: {m}"
            )
