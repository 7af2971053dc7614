"""`FrechetSegmentationDistance`: FSD as a real ``torchmetrics.Metric`` (the ``torchmetrics`` extra).

The metric torchmetrics and Lightning users expect: ``update(images, real)``, ``compute()`` returning a
scalar tensor, ``reset()``, and states that torchmetrics synchronizes across processes, so that in a
LightningModule ``self.log("val/fsd", metric)`` logs the FSD of every rank's images at the end of each
epoch and resets the metric for the next one::

    class Model(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.fsd = FrechetSegmentationDistance(real="lsun_church")

        def validation_step(self, batch, batch_idx):
            self.fsd.update(self.generator(batch), real=False)
            self.log("val/fsd", self.fsd)

The states, per side (``real_*``, ``fake_*``), all with ``dist_reduce_fx``: ``n``, ``count_sum`` and
``count_outer_sum``, the exact int64 sums of the images' class pixel counts (``"sum"``: integer sums are
exact and order-free, so the value does not depend on batch sizes or on how images are spread over
ranks), and ``rows``, each image's counts as int32 rows (``"cat"``) for the bootstrap interval, prevalence
and the per-class report (``keep_rows=False`` drops them). Everything else (segmenting, quantizing, the
distance) is `fsd.metric.MetricCore`, shared with `fsd.FSDMetric`.

``import fsd`` never imports this module, nor torchmetrics.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import numpy as np
import torch

try:
    from torchmetrics import Metric
    from torchmetrics.utilities.data import dim_zero_cat
    from torchmetrics.utilities.distributed import gather_all_tensors
except ImportError as exc:  # the extra is not installed
    raise ImportError(
        f"fsd.torchmetrics needs torchmetrics ({exc}): pip install 'pytorch-fsd[torchmetrics]'"
    ) from exc

from .api import FSDResult, RunOptions
from .generators import DEFAULT_VALUE_RANGE, ValueRange
from .metric import _SIDES, MetricCore
from .rows import Rows
from .segmenters.base import Segmenter
from .stats import Stats
from .uncertainty import BootstrapSettings

__all__ = ["FrechetSegmentationDistance"]

_SUMS = ("n", "count_sum", "count_outer_sum")


class FrechetSegmentationDistance(Metric):
    """FSD between the images given with ``update(images, real=True)`` (or ``real=`` up front) and those
    given with ``update(images, real=False)``; lower is better.

    ``segmenter``, ``real``, ``value_range``: as `fsd.FSDMetric` (the paper's UPP segmenter by default;
    reference statistics of the real side: a saved ``.npz``, `fsd.Stats`, a baseline name such as
    ``"lsun_church"`` or a folder; how float images map to uint8, ``(-1, 1)`` by default, ``(0, 1)``, or
    ``"uint8"``). Images go through the same quantization, resize and crop as image files, so the value
    equals `fsd.compute` on the same images saved as PNG.

    ``reset()`` forgets the fake images, and the real ones given with ``update`` unless
    ``reset_real_features=False`` (torchmetrics' FID convention); the ``real=`` statistics given up
    front are always kept. ``compute()`` returns the FSD as a float64 scalar tensor; the full
    `fsd.FSDResult` of the last compute (terms, statistics, interval with ``bootstrap=B``) is
    ``metric.result``, and ``metric.class_report()`` the per-class table.

    Calling the metric (``metric(images, real=False)``) adds the batch as `update` does and returns None:
    the FSD of one batch means nothing. The segmenter is no submodule: ``.to()``, ``.train()`` and
    ``state_dict()`` never reach it (it stays on ``device=``, by default CUDA, else MPS, else the CPU).
    Other keyword arguments (``sync_on_compute``, ``process_group``, ...) are torchmetrics' own.

    >>> from fsd.torchmetrics import FrechetSegmentationDistance   # doctest: +SKIP
    >>> metric = FrechetSegmentationDistance(real="lsun_church")     # doctest: +SKIP
    >>> metric.update(fake_images, real=False)                       # doctest: +SKIP
    >>> metric.compute(), metric.result.mean_term                    # doctest: +SKIP
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False
    plot_lower_bound = 0.0

    def __init__(
        self,
        segmenter: Segmenter | str | None = None,
        *,
        real=None,
        value_range: ValueRange = DEFAULT_VALUE_RANGE,
        reset_real_features: bool = True,
        keep_rows: bool = True,
        bootstrap: int = 0,
        ci_level: float = 0.95,
        bootstrap_seed: int = 0,
        device: str | torch.device | None = None,
        weights_dir: str | os.PathLike | None = None,
        progress: bool = False,
        batch_size: int = 32,
        num_workers: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        options = RunOptions(device=device, batch_size=batch_size, num_workers=num_workers,
                             weights_dir=weights_dir, progress=progress)
        # Kept out of the module tree on purpose (see the class docstring).
        self.__dict__["_core"] = MetricCore(segmenter, real, value_range, options, "FrechetSegmentationDistance")
        self.reset_real_features = reset_real_features
        self.keep_rows = keep_rows
        self.bootstrap = BootstrapSettings(bootstrap, ci_level, bootstrap_seed)
        self.__dict__["_last_result"] = None
        c = self._core.num_classes
        if keep_rows and self._core.pixels_per_image >= 2**31:
            raise ValueError("per-image rows are int32; this segmenter's images have too many pixels")
        for side in _SIDES:
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state(f"{side}_count_sum", torch.zeros(c, dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state(f"{side}_count_outer_sum", torch.zeros((c, c), dtype=torch.int64), dist_reduce_fx="sum")
            if keep_rows:
                self.add_state(f"{side}_rows", [], dist_reduce_fx="cat")

    # -- what it holds -------------------------------------------------------------------------------
    @property
    def segmenter(self) -> Segmenter:
        return self._core.segmenter

    @property
    def reference(self) -> Stats | None:
        """The real statistics given up front (``real=``), or None."""
        return self._core.reference

    @property
    def result(self) -> FSDResult | None:
        """The `fsd.FSDResult` of the last `compute` (None before the first)."""
        return self.__dict__["_last_result"]

    # -- torchmetrics' interface -----------------------------------------------------------------------
    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add a batch ``(N, 3, H, W)`` (float in ``value_range``, or uint8) to the real or fake side."""
        side = "real" if real else "fake"
        counts = self._core.counts(images, bool(real))
        n, count_sum, outer = MetricCore.sums(counts, self.device)
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + n)
        setattr(self, f"{side}_count_sum", getattr(self, f"{side}_count_sum") + count_sum)
        setattr(self, f"{side}_count_outer_sum", getattr(self, f"{side}_count_outer_sum") + outer)
        if self.keep_rows:
            getattr(self, f"{side}_rows").append(counts.to(self.device, torch.int32))

    def compute(self) -> torch.Tensor:
        """The FSD of everything added since the last reset (of every rank's images, when synchronized)."""
        result = self._core.result(self._side_stats("real"), self._side_stats("fake"), self.bootstrap)
        self.__dict__["_last_result"] = result
        return torch.tensor(result.fsd, dtype=torch.float64)

    def forward(self, images: torch.Tensor, real: bool) -> None:
        """Add the batch (as `update`); there is no per-batch value."""
        self.update(images, real)

    def reset(self) -> None:
        kept = {}
        if not self.reset_real_features:
            # a copy of the list states: torchmetrics empties lists in place
            kept = {name: copy.copy(getattr(self, name)) for name in self._state_names("real")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)

    def class_report(self, **options):
        """The per-class table (`fsd.report.class_report`) of the last `compute`; options as there."""
        from .errors import InputError
        from .report import class_report

        if self.result is None:
            raise InputError("no result yet: call compute() first")
        return class_report(self.result.real, self.result.fake, **options)

    # -- internals -----------------------------------------------------------------------------------
    def _state_names(self, side: str) -> list[str]:
        return [f"{side}_{name}" for name in _SUMS] + ([f"{side}_rows"] if self.keep_rows else [])

    def _side_stats(self, side: str) -> Stats:
        n = int(getattr(self, f"{side}_n"))
        rows, note = None, "made with keep_rows=False"
        if self.keep_rows:
            rows = self._rows(side, n)
            if rows is None:
                note = "restored from a state_dict without the per-image rows"
        stats = self._core.stats(side, n, getattr(self, f"{side}_count_sum"),
                                 getattr(self, f"{side}_count_outer_sum"), rows, note)
        return self._core.with_reference(side, stats)

    def _rows(self, side: str, n: int) -> Rows | None:
        state = getattr(self, f"{side}_rows")
        if isinstance(state, list):
            state = dim_zero_cat(state) if state else torch.zeros((0, self._core.num_classes), dtype=torch.int32)
        dense = state.reshape(-1, self._core.num_classes).cpu().numpy().astype(np.int64)
        if len(dense) != n:
            return None
        index = range(n)
        return Rows.from_dense(dense, list(index), [f"{side}[{k}]" for k in index])

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group=None) -> None:
        # torchmetrics gathers an empty list state as a 1-D float tensor, which cannot meet the 2-D int32
        # rows of a rank that has some: an empty side gathers as zero int32 rows instead.
        if self.keep_rows:
            for side in _SIDES:
                if not getattr(self, f"{side}_rows"):
                    empty = torch.zeros((0, self._core.num_classes), dtype=torch.int32, device=self.device)
                    setattr(self, f"{side}_rows", [empty])
        super()._sync_dist(dist_sync_fn, process_group)

    def extra_repr(self) -> str:
        counts = ", ".join(f"{side}={int(getattr(self, f'{side}_n'))}" for side in _SIDES)
        reference = f", reference n={self.reference.n}" if self.reference is not None else ""
        return f"segmenter={self._core.segmenter.name!r}, {counts}{reference}"
