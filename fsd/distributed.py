"""torch.distributed: which share of a source each process segments, and the exact sum of the results.

Sharding. Under an initialized process group of ``W`` processes (``torchrun``, or a training loop's
own ``init_process_group``), rank ``r`` of ``W``:

- of a file source (folder, archive, array), takes the chosen indices ``chosen[r::W]``, where
  ``chosen`` is the whole source or the paper's seeded subset (`fsd.sources.select_indices`), the same
  list on every rank;
- of a generator, makes samples ``k`` with ``k % W == r``; latents depend only on ``(seed, k)``, so the
  set of samples does not depend on ``W`` or the batch size (see `fsd.generators`).

Each rank sums its images' integer class pixel counts; one ``all_reduce`` (SUM) of the int64 sums
gives every rank the statistics of the whole set. Integer sums are exact and order-free, so the
result equals the single-process result bit for bit, also with unequal numbers of images per rank, as long
as each process segments with the same thread count (float32 rounding depends on it; see the README).

Failures. A rank that fails while the others wait in a collective would hang them forever, so
`run_on_all_ranks` runs a step on every rank and, if it failed anywhere, raises on every rank: the
failing rank re-raises its own error, the others raise `RankFailed` carrying its message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from .errors import FSDError, InputError
from .rows import Rows
from .stats import Stats, merge_environments

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes sharing a computation."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's share: ``indices[rank::size]``."""
        return list(indices[self.rank :: self.size])


SINGLE = World(0, 1)


class RankFailed(FSDError):
    """Another rank failed; its error message is in this one. ``rank`` names it."""

    def __init__(self, rank: int, message: str):
        self.rank = rank
        super().__init__(f"rank {rank} failed: {message}")


class RankInputFailed(RankFailed, InputError):
    """Another rank failed on bad input (the CLI exits with status 2, as for `InputError`)."""


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def current_world(distributed: bool | None = None) -> World:
    """The processes to shard over.

    ``None`` (default): all processes of the default group when one is initialized, else this one.
    ``True``: the same, but an uninitialized group is an error. ``False``: this process alone, also
    under ``torchrun`` (for a computation run on one rank only: a collective would wait forever).
    """
    if distributed is False:
        return SINGLE
    if not is_initialized():
        if distributed:
            raise InputError(
                "distributed=True but torch.distributed is not initialized: launch with torchrun and call "
                "torch.distributed.init_process_group() first, or leave distributed=None"
            )
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size())


def local_device(device: str | torch.device | None, world: World) -> torch.device | None:
    """The device a rank should use when the user named none (or just ``"cuda"``): its own GPU.

    ``$LOCAL_RANK`` (set by torchrun) picks the GPU, else ``torch.cuda.current_device()``. Other
    devices, and everything outside a multi-process run, are returned as given.
    """
    from .devices import resolve_device

    if device is not None:
        resolve_device(device)  # a device that does not exist here is bad input, named before any work
    if world.size == 1 or not torch.cuda.is_available():
        return None if device is None else torch.device(device)
    if device is not None and str(device) != "cuda":
        return torch.device(device)
    local = os.environ.get("LOCAL_RANK", "")
    index = int(local) % torch.cuda.device_count() if local.isdigit() else torch.cuda.current_device()
    return torch.device("cuda", index)


def init_from_environment(device: str | torch.device | None = None) -> bool:
    """Initialize the default process group when launched by torchrun (``$WORLD_SIZE`` > 1).

    NCCL on CUDA (the GPU of ``$LOCAL_RANK``), gloo otherwise. Returns whether this call initialized
    the group, in which case the caller should `shutdown` it at the end.
    """
    if is_initialized():
        return False
    size = os.environ.get("WORLD_SIZE", "1")
    if not size.isdigit() or int(size) <= 1:
        return False
    if not dist.is_available():
        raise InputError("launched with WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    wanted = torch.device(device) if device is not None else None
    use_cuda = torch.cuda.is_available() and (wanted is None or wanted.type == "cuda")
    if use_cuda:
        local = os.environ.get("LOCAL_RANK", "0")
        index = wanted.index if wanted is not None and wanted.index is not None else int(local or 0)
        torch.cuda.set_device(index % torch.cuda.device_count())
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over all ranks, as a new tensor on ``tensor``'s device."""
    work = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def pack_sums(n: int, count_sum: np.ndarray, count_outer_sum: np.ndarray) -> torch.Tensor:
    """``[n, count_sum..., count_outer_sum...]`` as one int64 tensor, so one collective carries them."""
    return torch.cat([
        torch.tensor([n], dtype=torch.int64),
        torch.tensor(np.asarray(count_sum, dtype=np.int64)).reshape(-1),  # a copy: the sums may be read-only
        torch.tensor(np.asarray(count_outer_sum, dtype=np.int64)).reshape(-1),
    ])


def unpack_sums(packed: torch.Tensor, num_classes: int) -> tuple[int, np.ndarray, np.ndarray]:
    values = packed.cpu().numpy()
    c = num_classes
    return int(values[0]), values[1 : 1 + c].copy(), values[1 + c : 1 + c + c * c].reshape(c, c).copy()


def reduce_stats(stats: Stats, world: World, distinct_ranks: bool = False) -> Stats:
    """A new `Stats` holding the sums of every rank's ``stats`` (exact), every rank's skipped images, and
    every rank's per-image rows (if every rank kept them).

    Rows of a sharded source carry source indices, so sorted by index they are the single-process rows.
    ``distinct_ranks``: the ranks' rows were numbered independently (a metric's updates); their
    identities get a ``rank<r>/`` prefix so they stay distinct.
    """
    if world.size == 1:
        return stats
    packed = all_reduce_sum(pack_sums(stats.n, stats.count_sum, stats.count_outer_sum))
    n, count_sum, count_outer_sum = unpack_sums(packed, stats.num_classes)
    shares: list = [None] * world.size
    dist.all_gather_object(shares, (list(stats.skipped), stats.rows, stats.rows_note, stats.environment))
    skipped = tuple(item for share, _, _, _ in shares for item in share)
    rows = None
    notes = [note for _, r, note, _ in shares if r is None]
    if not notes:
        parts = [r for _, r, _, _ in shares]
        if distinct_ranks:  # rank-major order: indices follow on from the ranks before
            offsets = np.cumsum([0] + [len(r) for r in parts[:-1]])
            parts = [replace(r, ids=tuple(f"rank{k}/{i}" for i in r.ids), index=np.arange(len(r)) + offset)
                     for k, (r, offset) in enumerate(zip(parts, offsets))]
        rows = Rows.concatenate(parts, stats.num_classes)
    return Stats.from_sums(stats.meta, stats.pixels_per_image, n, count_sum, count_outer_sum, rows=rows,
                           rows_note=notes[0] if notes else "", skipped=skipped,
                           environment=merge_environments(*(share[3] for share in shares)))


def run_on_all_ranks(world: World, step: Callable[[], T]) -> T:
    """Run ``step`` on this rank; if it raised on any rank, raise on every rank (see the module doc).

    ``KeyboardInterrupt`` is not caught: interrupting one rank ends the job through the launcher.
    """
    if world.size == 1:
        return step()
    error: Exception | None = None
    try:
        result = step()
    except Exception as exc:  # every error is reported to the other ranks, then raised here
        error = exc
    reports: list = [None] * world.size
    report = None if error is None else (str(error) or type(error).__name__, isinstance(error, InputError))
    dist.all_gather_object(reports, report)
    failed = [(rank, r) for rank, r in enumerate(reports) if r is not None]
    if error is not None:
        error._fsd_shared_with_ranks = True  # the CLI prints it once, on rank 0
        raise error
    if failed:
        rank, (message, is_input) = failed[0]
        cls = RankInputFailed if is_input else RankFailed
        exc = cls(rank, message)
        exc._fsd_shared_with_ranks = True
        raise exc
    return result


def was_reported_to_all(error: BaseException) -> bool:
    """Whether every rank knows of this error (raised through `run_on_all_ranks`)."""
    return bool(getattr(error, "_fsd_shared_with_ranks", False))
