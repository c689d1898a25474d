"""Several processes training one model: torchrun and PyTorch's DistributedDataParallel.

    torchrun --nproc-per-node 2 -m slm train data/mine --max-steps 2000          # one machine
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m slm train data/mine   # two machines

torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address; `start` joins them into one process group (NCCL on CUDA, gloo on CPU) with a
timeout, so that no rank waits forever on a collective if another one is gone. What the
ranks share:

- **Batches**: every rank runs the same seeded stream of window starts and takes its own
  slice of each global batch (`BatchSampler`'s `rank` / `world_size`), so a run's data does
  not depend on how many processes share it: 2 processes of batch 4 see exactly the windows
  of 1 process of batch 8, and a checkpoint resumes in any world size where it stopped.
- **Gradients**: DDP averages them across ranks; with gradient accumulation the all-reduce
  runs only on the last micro-batch (`no_sync` before it).
- **One step's verdict**: one small all-reduce per step carries the mean loss, whether any
  rank was asked to stop (Ctrl-C, SIGTERM) and rank 0's clock, so every rank takes the same
  decision to evaluate, save or stop at the same step.
- **Rank 0 alone** prepares data (the others wait for it), holds the run folder's lock,
  logs, evaluates, draws the progress bar and writes checkpoints and metrics.

A single process (no torchrun) gets `Dist()`: rank 0 of 1, and every function here is then a
no-op that costs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

# A collective that waits longer than this ends the run with an error instead of hanging:
# long enough for rank 0's evaluation and checkpoint while the others wait at the next step.
TIMEOUT_S = 600


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True when this process was started by torchrun (or another elastic launcher)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_torchelastic_launched()


def start(device: str) -> Dist:
    """Join the process group torchrun set up; `Dist()` when there is none.

    `device` is the --device setting: NCCL serves CUDA tensors, gloo CPU ones.
    """
    if not launched():
        return Dist()
    import torch.distributed as dist

    use_cuda = device != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by torchrun
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def finish(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def broadcast(value: Any, d: Dist) -> Any:
    """Rank 0's `value` on every rank (a small picklable object)."""
    if not d.enabled:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def step_verdict(
    loss: float, stop: bool, elapsed_s: float, reserve_s: float, d: Dist
) -> tuple[float, bool, float, float]:
    """(mean loss over ranks, whether any rank must stop, rank 0's elapsed seconds and the
    time rank 0 keeps back for the run's end): every rank ends at the same step."""
    if not d.enabled:
        return loss, stop, elapsed_s, reserve_s
    import torch.distributed as dist

    main = 1.0 if d.is_main else 0.0
    values = torch.tensor(
        [loss / d.world_size, float(stop), elapsed_s * main, reserve_s * main],
        dtype=torch.float64,
    )
    if dist.get_backend() == "nccl":
        values = values.cuda()
    dist.all_reduce(values)  # one small message a step; gloo and NCCL both sum float64
    return float(values[0]), bool(values[1] > 0), float(values[2]), float(values[3])


def wrap(model: torch.nn.Module, device: torch.device, d: Dist) -> torch.nn.Module:
    """The model under DDP (which also copies rank 0's weights to every rank at the start)."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
