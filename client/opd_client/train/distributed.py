"""Data parallelism for one student job: `torchrun --nproc-per-node N opd-train run CFG`.

Why this module exists: a student that needs several GPUs runs as N processes under
torchrun (DESIGN.md §2, "scale-out without home-made machinery"). Each rank samples its
own share of the step's prompts, streams its own rollouts to the shared teacher, and
backpropagates through PyTorch's `DistributedDataParallel`, which averages gradients
across ranks; so every rank holds the same parameters after every step. The pieces here
are what the loop needs beyond DDP itself:

- `Parallel.from_env()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); with
  none set it is a world of one, and every collective below is a no-op.
- The step's prompts are split in contiguous shards (`shard`), and the loss of each rank is
  normalised by the token count of the whole world (`all_reduce_sum`), so a run on N ranks
  takes the same step as one process with the whole batch (the DDP test checks that).
- Only rank 0 writes (checkpoints, metrics, evals, the progress bar); `barrier` keeps the
  others from reading a checkpoint before it is complete.
- `param_digest` (sha256 of every parameter's bytes) lets a run prove its ranks agree.

The process group's timeout is the trainer's teacher wait plus a margin: a rank that
waits for a teacher must not make the others' collectives time out first.

What it does not know: the loss, the teacher or checkpoints' contents.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Parallel:
    """This process's place in the job: rank `rank` of `world_size`."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Parallel:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(
            rank=int(os.environ.get("RANK", "0")) if world > 1 else 0,
            world_size=world,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0,
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, configured: str) -> str:
        """`cuda` becomes this rank's GPU under torchrun; `cpu` and `cuda:N` stay."""
        if self.enabled and configured == "cuda":
            return f"cuda:{self.local_rank}"
        return configured

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's contiguous share of `items` (whose length the world size divides)."""
        n = len(items) // self.world_size
        return list(items[self.rank * n : (self.rank + 1) * n])

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over all ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return [float(v) for v in values]
        buf = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return [float(v) for v in buf.tolist()]

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank passes True."""
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


@contextlib.contextmanager
def process_group(parallel: Parallel, device: str, timeout_s: float) -> Iterator[None]:
    """`with process_group(...)`: joins torchrun's group (gloo on CPU, nccl on CUDA)."""
    if not parallel.enabled or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()


class HiddenStates(nn.Module):
    """The student up to its final norm: what DDP wraps.

    The LM head is applied outside, only at the support (the fused path), so DDP's
    forward is the transformer body; the head's gradient still reaches DDP's reducer
    through the hooks it puts on every parameter.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids_BL: Tensor, attention_BL: Tensor) -> Tensor:
        base = getattr(self.model, self.model.base_model_prefix)
        return base(input_ids=input_ids_BL, attention_mask=attention_BL, use_cache=False)[0]


def data_parallel(model: Any, parallel: Parallel) -> nn.Module:
    """The student's body, wrapped in DistributedDataParallel when there are several ranks.

    DDP broadcasts rank 0's parameters at construction, so all ranks start equal.
    """
    body = HiddenStates(model)
    if not parallel.enabled:
        return body
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(body, device_ids=ids)


def param_digest(model: nn.Module) -> str:
    """sha256 over every parameter's bytes in order: equal digests mean equal weights."""
    h = hashlib.sha256()
    for name, param in model.named_parameters():
        h.update(name.encode())
        h.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
