"""Data-parallel training over N processes started by torchrun (PyTorch's own engine; gloo on CPU, NCCL on CUDA).

    torchrun --standalone --nproc_per_node=N -m aigc train FAMILY --data DATASET ...

The design keeps N processes equivalent to one (Goyal et al., "Accurate, Large Minibatch SGD", 2017, on what
data parallelism must preserve): `data.batch_size` is per process (DESIGN.md), the global batch N times it.
Every rank draws the same global batch from the same seeded batcher and keeps its own rows (`shard`), and
every per-example random number (noise, timesteps, latents, dropped conditions) is drawn for the whole global
batch from the same generator state on every rank, each keeping its rows (`draw_rows`). The trainer averages
each optimiser's gradients over the ranks before clipping and the step (`average_gradients`, one all-reduce per
update, so a GAN's D update syncs only D), and averages the logged metrics. So with mean-reduced losses, 2
processes with batch B/2 each take the steps one process with batch B takes (tests/test_dist.py), and a
checkpoint (no wrapper, no `module.` prefix) resumes on any number of processes. Rank 0 alone logs, evaluates,
samples and writes the run folder; the stop decision (budget, signal) is shared every step so that all ranks
stop at the same step.

Not DistributedDataParallel: its bucketed all-reduce overlaps communication with the backward pass, but it
wraps the modules (renaming their weights) and syncs in every backward, which a GAN's two updates per step and
this trainer's `opt.update(name, loss)` do not need. BatchNorm statistics stay per rank (DCGAN is therefore
not exactly equivalent to one process)."""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Callable

import torch

RANK, WORLD, LOCAL_RANK, LOCAL_WORLD = 0, 1, 0, 1
TIMEOUT_S = float(os.environ.get("AIGC_DIST_TIMEOUT", 1800))   # a collective waits this long (rank 0 may evaluate)
BACKEND = os.environ.get("AIGC_DIST_BACKEND")   # override: nccl | gloo (gloo also all-reduces CUDA tensors)


def launched() -> bool:
    """Started by torchrun (or another launcher that sets RANK and WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device_name: str) -> str:
    """Join the process group when launched by torchrun; returns the device name this rank uses (on GPUs
    cuda:LOCAL_RANK, wrapped round the GPUs there are: NCCL refuses two ranks on one GPU, gloo takes them).
    A no-op for a single process."""
    global RANK, WORLD, LOCAL_RANK, LOCAL_WORLD
    if not launched() or torch.distributed.is_initialized():
        return device_name
    RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    LOCAL_RANK = int(os.environ.get("LOCAL_RANK", 0))
    LOCAL_WORLD = int(os.environ.get("LOCAL_WORLD_SIZE", WORLD))
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        index = LOCAL_RANK % max(1, torch.cuda.device_count())
        torch.cuda.set_device(index)
        device_name = f"cuda:{index}"
    torch.distributed.init_process_group(BACKEND or ("nccl" if cuda else "gloo"),
                                         timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return device_name


def teardown(wait: bool = True) -> None:
    """Leave the process group; with `wait`, first wait for every rank (rank 0 may still be evaluating), so that
    no rank tears its connections down under another's feet."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def is_main() -> bool:
    return RANK == 0


def threads_per_rank() -> int:
    """This rank's share of the machine's cores (0 = not launched: the thread policy decides)."""
    if LOCAL_WORLD <= 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // LOCAL_WORLD)


def global_config(cfg):
    """The run config the batcher is built from: the global batch, `data.batch_size` (per process) x WORLD rows."""
    if WORLD == 1:
        return cfg
    import copy

    out = copy.deepcopy(cfg)
    out.data.batch_size = cfg.data.batch_size * WORLD
    return out


def rows(n: int) -> slice:
    """This rank's rows of a global batch of n."""
    k = n // WORLD
    return slice(RANK * k, (RANK + 1) * k)


def shard(batch: dict) -> dict:
    """This rank's rows of a global batch (tensors and lists whose length is the batch size)."""
    if WORLD == 1:
        return batch
    n = next(len(v) for v in batch.values() if isinstance(v, (torch.Tensor, list)))
    part = rows(n)
    return {k: v[part] if isinstance(v, (torch.Tensor, list)) and len(v) == n else v for k, v in batch.items()}


_SHARDED = False          # inside a training step (`sharded()`): draws are for this rank's rows of the global batch


@contextlib.contextmanager
def sharded():
    """The trainer's training step: `draw_rows` draws for the global batch. Outside it (evaluation and sampling,
    on rank 0 only) draws are a single process's, so rank 0's evaluation equals one process's."""
    global _SHARDED
    before, _SHARDED = _SHARDED, WORLD > 1
    try:
        yield
    finally:
        _SHARDED = before


def draw_rows(draw: Callable[[tuple], torch.Tensor], shape) -> torch.Tensor:
    """`draw(shape)` for this rank's rows: in a training step on N processes, the whole global batch's numbers
    are drawn (every rank from the same generator state) and this rank keeps its rows, so N processes draw what
    one process draws."""
    if not _SHARDED:
        return draw(tuple(shape))
    shape = tuple(shape)
    return draw((shape[0] * WORLD, *shape[1:]))[rows(shape[0] * WORLD)]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of `params` over the ranks, in one all-reduce of one flat buffer."""
    if WORLD == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= WORLD
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()


def mean_over_ranks(values: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """The ranks' average of each (scalar) value; the same dict on every rank."""
    if WORLD == 1 or not values:
        return values
    keys = sorted(values)
    flat = torch.stack([values[k].detach().float().reshape(()).to(device) for k in keys])
    torch.distributed.all_reduce(flat)
    flat /= WORLD
    return dict(zip(keys, flat))


def any_rank(flags: list[bool], device) -> list[bool]:
    """Each flag true on every rank when it is true on any (shared stop decisions), in one all-reduce."""
    if WORLD == 1:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if WORLD == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if WORLD > 1:
        torch.distributed.barrier()
