"""Choosing images (the paper's subset rule) and reading them in batches in DataLoader workers, which
never raise: a worker hands each error back with the image's identity, and a worker that dies is
blamed on the image it was reading."""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .._hints import option
from ..errors import ImageReadError, InputError
from ..segmenters.base import Preprocessing
from .base import MapSource, SourceFormatError, _reason


def select_indices(total: int, num_samples: int | None, seed: int) -> list[int]:
    """The paper's subset rule: shuffle ``range(total)`` with ``random.Random(seed)``, take the first k."""
    if num_samples is None:
        return list(range(total))
    if num_samples < 1:
        raise InputError(f"{option('num_samples', '--num-samples')} must be at least 1, got {num_samples}")
    if num_samples > total:
        raise InputError(
            f"asked for {num_samples} images but the source has only {total}; "
            f"lower {option('num_samples', '--num-samples')} or add images"
        )
    indices = list(range(total))
    random.Random(seed).shuffle(indices)
    return indices[:num_samples]


@dataclass
class Batch:
    images: torch.Tensor  # (B, C, S, S): uint8 RGB, or int32 labels
    ids: list[str]
    indices: list[int]  # each image's index in its source


class _Reader(torch.utils.data.Dataset):
    """Reads one image per call and never raises: ``(array | None, index, error | None, fatal)``.

    ``current`` (shared memory, one row per worker) holds ``(pid, index)`` of the image each worker is
    decoding, so a worker that dies can be blamed on its image. Images in ``known_bad`` (those that
    killed a worker) are reported with their reason, in their place in the order, without reading them.
    """

    def __init__(self, source: MapSource, indices: Sequence[int], preprocessing: Preprocessing,
                 current: torch.Tensor | None, known_bad: dict[int, str]):
        self.source, self.indices, self.preprocessing, self.current = source, indices, preprocessing, current
        self.known_bad = known_bad

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        index = self.indices[k]
        if index in self.known_bad:
            return None, index, self.known_bad[index], False
        worker = torch.utils.data.get_worker_info() if self.current is not None else None
        if worker is not None:
            self.current[worker.id, 0] = os.getpid()
            self.current[worker.id, 1] = index
        try:
            return self.source.read(index, self.preprocessing), index, None, False
        except SourceFormatError as exc:
            return None, index, str(exc), True
        except ImageReadError as exc:
            return None, index, exc.reason, False
        except Exception as exc:  # never let a worker die without naming the image
            return None, index, _reason(exc), False
        finally:
            if worker is not None:
                self.current[worker.id, 1] = -1


def _collate(items):
    # torch warns on (and will not own) read-only arrays, which a custom source's read() may return.
    good = [(torch.from_numpy(a if a.flags.writeable else a.copy()), i) for a, i, err, _ in items if err is None]
    bad = [(i, err, fatal) for a, i, err, fatal in items if err is not None]
    images = torch.stack([a for a, _ in good]) if good else None
    return images, [i for _, i in good], bad


def default_num_workers() -> int:
    """Loader workers: up to 8 on Linux (fork is cheap and safe); 0 elsewhere, where workers are
    spawned processes that re-import the caller's script (pass num_workers to opt in)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus))


def _report_worker_deaths_from_next(iterator) -> None:
    """torch reports a dead worker from a SIGCHLD handler, at any point of the main thread (inside the
    caller's model, say), where the image cannot be named. Unregistering the workers from that handler
    makes the death surface from ``next()`` instead (torch checks its workers every 5 s while waiting).
    Private torch API: if it changes, torch's own report stays in place."""
    try:
        from torch.utils.data import _utils

        if getattr(iterator, "_worker_pids_set", False):
            _utils.signal_handling._remove_worker_pids(id(iterator))
            iterator._worker_pids_set = False
    except Exception:
        pass


_MAX_WORKER_RESTARTS = 8


def iterate_batches(
    source: MapSource,
    indices: Sequence[int],
    preprocessing: Preprocessing,
    *,
    batch_size: int,
    num_workers: int,
    skip_bad_images: bool,
    skipped: list[tuple[str, str]],
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Decoded, preprocessed batches of ``source[indices]``, in order.

    A bad image raises `ImageReadError`, or with ``skip_bad_images`` is appended to ``skipped`` as
    ``(identity, reason)``. A worker process that dies is blamed on the image it was reading, which is
    then treated like any bad image (reading resumes with fresh workers after it).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise InputError(f"num_workers must be >= 0, got {num_workers}")
    remaining = list(indices)
    known_bad: dict[int, str] = {}
    restarts = 0
    while remaining:
        current = torch.full((num_workers, 2), -1, dtype=torch.int64).share_memory_() if num_workers else None
        loader = torch.utils.data.DataLoader(
            _Reader(source, remaining, preprocessing, current, known_bad),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            prefetch_factor=4 if num_workers > 0 else None,
            persistent_workers=False,
        )
        iterator = iter(loader)
        try:
            _report_worker_deaths_from_next(iterator)
            done = 0
            while True:
                try:
                    images, good, bad = next(iterator)
                except StopIteration:
                    return
                except RuntimeError as exc:
                    if current is None or "DataLoader worker" not in str(exc):
                        raise
                    culprit = _dead_workers_image(current, str(exc))
                    if culprit is None:
                        pending = remaining[done:done + batch_size]
                        raise InputError(
                            f"an image-decoding worker process died ({exc}) while reading one of the images "
                            f"from {source.identity(pending[0])} on; rerun with num_workers=0 "
                            "(--num-workers 0) to find the file, or check the machine's memory"
                        ) from exc
                    reason = (f"the worker process decoding it died ({exc}); the file may crash the image "
                              "decoder, or the machine ran out of memory")
                    if not skip_bad_images:
                        raise ImageReadError(source.identity(culprit), reason) from exc
                    restarts += 1
                    if restarts > _MAX_WORKER_RESTARTS:
                        raise InputError(f"image-decoding worker processes died {restarts} times (last: {exc}); "
                                         "this is more likely the machine (memory) than the files") from exc
                    # Reported when the reading order reaches it (workers read ahead), so `skipped` and the
                    # yielded images always cover a prefix of `indices`: what resuming relies on.
                    known_bad[culprit] = reason
                    remaining = remaining[done:]
                    break
                for index, reason, fatal in bad:
                    if fatal:
                        raise SourceFormatError(reason)
                    if not skip_bad_images:
                        raise ImageReadError(source.identity(index), reason)
                    skipped.append((source.identity(index), reason))
                done += len(good) + len(bad)
                if images is not None:
                    yield Batch(images, [source.identity(i) for i in good], list(good))
        finally:
            # Also on Ctrl-C and on errors: the traceback keeps the iterator alive, and with it
            # its worker processes, for as long as the caller holds the exception.
            _stop_workers(iterator)


def _stop_workers(iterator: object) -> None:
    """Ends a loader iterator's worker processes now rather than when it is garbage collected."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _dead_workers_image(current: torch.Tensor, message: str) -> int | None:
    """The image a dead worker was decoding, from the pids torch names in its error message."""
    dead = {int(p) for p in re.findall(r"\b\d+\b", message)}
    for pid, index in current.tolist():
        if pid in dead and index >= 0:
            return int(index)
    return None
