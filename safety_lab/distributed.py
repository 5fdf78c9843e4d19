"""Data-parallel training under `accelerate launch` (or torchrun): every rank trains, rank 0 alone tracks.

The launcher sets WORLD_SIZE / RANK / LOCAL_RANK. Rank 0 owns the Optuna study and every MLflow call; the other
ranks receive each trial's parameters and pruning decisions through optuna-integration's TorchDistributedTrial,
and their gradients through DDP inside the Trainer.
"""

from __future__ import annotations

import os
import warnings

from safety_lab.errors import check


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def per_device_batch(batch_size: int) -> int:
    """`batch_size` is the global batch: each of the N processes takes batch_size / N, so results match one device."""
    n = world_size()
    check(batch_size % n == 0, "batch_size", f"{batch_size} does not split evenly over {n} processes (WORLD_SIZE)")
    return batch_size // n


def init(device: str) -> None:
    """Join the process group once (NCCL on GPUs, gloo on CPUs) through accelerate, as the Trainer will."""
    if world_size() <= 1:
        return
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    check(
        state.num_processes == world_size(),
        "device",
        f"{world_size()} processes launched but accelerate set up {state.num_processes} ({state.distributed_type})",
    )


def distributed_trial(trial):
    """The trial as every rank sees it: rank 0 passes its Optuna trial, the others None."""
    if world_size() <= 1:
        return trial
    import optuna
    from optuna_integration import TorchDistributedTrial

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TorchDistributedTrial(trial)


def finish() -> None:
    """Leave the process group: rank 0 goes on alone (logging, registration, evaluation)."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def agree(value):
    """Rank 0's `value` on every rank: a decision (pruning a trial) only rank 0, which holds the study, can take."""
    if world_size() <= 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
