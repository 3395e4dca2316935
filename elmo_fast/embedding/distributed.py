"""Several processes on one embed (``torchrun``): who embeds which chunks, and the agreement steps.

Rank ``r`` of ``N`` embeds the ``r``-th contiguous block of chunks (:func:`rank_share`) into chunk files in
the shared work folder; rank 0 alone scans the input (validation, chunk plan, sentence store) and sends the
plan (or the input error) to the others, and after every rank has reported success it merges the chunk files
into the output. Any rank's failure is reported to all (``all_gather``), so no rank waits forever at a barrier.
On CPU the process group uses ``gloo``; under CUDA with ``LOCAL_RANK`` each process uses its own GPU.

Stateful runs: each rank's block starts from zero LSTM state, so a stateful multi-process run differs from a
single-process run at block starts (the first batches of each rank). The chunk fingerprints include the
block start, so a rerun with another world size never reuses such chunks.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["rank_share", "distributed_env", "process_group", "broadcast_from_zero", "gather_ok"]


def rank_share(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous block ``[lo, hi)`` of ``n`` items that process ``rank`` of ``world`` handles."""
    if not 0 <= rank < world:
        raise ValueError(f"rank: expected 0 <= rank < world ({world}), found {rank}")
    return n * rank // world, n * (rank + 1) // world


def distributed_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment variables; (0, 1) outside torchrun (validated by
    :func:`elmo_fast.settings.distributed`: a bad value is a one-line error naming the variable)."""
    from .. import settings
    env = settings.distributed()
    return env.rank, env.world_size


@contextmanager
def process_group() -> Iterator[None]:
    """Initialise a gloo process group from the environment if none exists; destroy it on exit."""
    import torch.distributed as dist
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        created = True
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def broadcast_from_zero(obj: Any, world: int) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object)."""
    if world <= 1:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_ok(error: str | None, world: int) -> list[str | None]:
    """Every rank's error message (None = success), on every rank."""
    if world <= 1:
        return [error]
    import torch.distributed as dist
    out: list[Any] = [None] * world
    dist.all_gather_object(out, error)
    return out
