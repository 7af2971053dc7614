"""`FSDMetric`: FSD as a streaming metric for training loops, in the style of torchmetrics.

The states are the sufficient statistics of each side: the number of images, the sum of their per-class
pixel counts, and the sum of the counts' outer products, as exact int64 tensors with a SUM reduction.
torchmetrics' FID keeps float64 sums; integer sums are strictly better here, because the per-image samples
are whole pixel counts: sums are exact and order-free, so the result does not depend on batch sizes, on
the order of updates or on how images are spread over ranks. The mean and covariance are formed from them
in float64 (`fsd.stats.Stats`).
"""

from __future__ import annotations

import os

import torch

from .distributed import current_world, reduce_stats, run_on_all_ranks
from ._text import plural
from .errors import InputError
from .generators import DEFAULT_VALUE_RANGE, ValueRange, images_to_uint8, parse_value_range, prepare_images
from .segmenters.base import Segmenter, class_counts
from .rows import Rows, exact_block_weight, exact_outer_sum
from .stats import Stats, max_images
from .uncertainty import BootstrapSettings

_SIDES = ("real", "fake")


class MetricCore:
    """What every streaming FSD metric shares (`FSDMetric`, `fsd.torchmetrics.FrechetSegmentationDistance`).

    It loads the segmenter and the optional reference statistics of the real side, turns a batch of images
    into per-image class pixel counts, forms the exact int64 sums a metric keeps as its states, and turns
    the sums (and rows) of both sides into the `fsd.FSDResult`. The metrics own their states and how they
    are synchronized; everything about images and numbers is here, once.
    """

    def __init__(self, segmenter: Segmenter | str | None, real, value_range: ValueRange, options, owner: str):
        from .api import _meta_for, _open, _run_segmenter, _stats_of

        world = current_world(None)
        # One step on all ranks: a rank that fails to load or open raises on every rank, none hangs.
        seg, opened = run_on_all_ranks(
            world, lambda: (_run_segmenter(segmenter, options, world), None if real is None else _open(real, options)))
        if seg.preprocessing.kind != "rgb":
            raise InputError(f"{owner} needs a segmenter of RGB images; {seg.name} reads {seg.preprocessing.kind!r}")
        self.owner = owner
        self.segmenter = seg
        self.value_range = parse_value_range(value_range)
        self.num_classes = len(seg.class_names)
        self.pixels_per_image = seg.preprocessing.size ** 2
        self.meta = {side: _meta_for(seg, f"{owner} {side} images") for side in _SIDES}
        self.reference: Stats | None = None
        if opened is not None:
            reference = opened if isinstance(opened, Stats) else _stats_of(opened, seg, options, world)
            reference.meta.check_comparable(self.meta["real"], ("the real statistics", "this metric's segmenter"))
            if reference.pixels_per_image != self.pixels_per_image:
                raise InputError(f"the real statistics count {reference.pixels_per_image} pixels per image, "
                                 f"this segmenter {self.pixels_per_image}")
            self.reference = reference

    def counts(self, images: torch.Tensor, real: bool) -> torch.Tensor:
        """Per-image class pixel counts ``(N, C)`` int64 of a batch ``(N, 3, H, W)``, on the segmenter's device.

        Float images are quantized by the package's one rule (out of ``value_range``: an `InputError`),
        then resized and cropped as image files are, so a metric equals `fsd.compute` on the same images
        saved as PNG.
        """
        uint8 = images_to_uint8(images, self.value_range, f"images given to {self.owner}.update(real={real})",
                                in_update=True)
        seg = self.segmenter
        _keep_eval(seg)
        prepared = prepare_images(uint8, seg.preprocessing)
        with torch.inference_mode():
            labels = seg.segment(prepared.to(seg.device))
        return class_counts(labels, self.num_classes)

    @staticmethod
    def sums(counts: torch.Tensor, device: torch.device, pixels_per_image: int = 1 << 16,
             ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """``(n, count_sum (C,), count_outer_sum (C, C))`` of a batch of counts, exact int64 on ``device``."""
        work = device if device.type != "mps" else torch.device("cpu")  # no float64 on MPS
        counts = counts.to(work)
        if counts.shape[0] <= exact_block_weight(pixels_per_image):
            # float64 products and sums of whole counts are exact below 2**53 (fsd.rows.exact_outer_sum).
            as_float = counts.to(torch.float64)
            outer = (as_float.T @ as_float).round().to(torch.int64)
        else:
            outer = torch.from_numpy(exact_outer_sum(counts.cpu().numpy())).to(work)
        return counts.shape[0], counts.sum(dim=0).to(device), outer.to(device)

    def stats(self, side: str, n: int, count_sum: torch.Tensor, count_outer_sum: torch.Tensor,
              rows: Rows | None, rows_note: str = "") -> Stats:
        """The `Stats` of one side's sums (and rows), without the reference."""
        return Stats.from_sums(self.meta[side], self.pixels_per_image, n, count_sum.cpu().numpy(),
                               count_outer_sum.cpu().numpy(), rows=rows, rows_note=rows_note)

    def with_reference(self, side: str, stats: Stats) -> Stats:
        """``stats`` plus, for the real side, the reference statistics given up front."""
        if side != "real" or self.reference is None:
            return stats
        if stats.n == 0:
            return self.reference
        combined = Stats(self.reference.meta, self.pixels_per_image)
        combined.merge(self.reference)
        combined.merge(stats)
        return combined

    def result(self, real: Stats, fake: Stats, bootstrap: BootstrapSettings):
        """The `fsd.FSDResult` of both sides; fewer than 2 images on a side is an `InputError`."""
        from .api import _distance

        for name, stats in (("real", real), ("fake", fake)):
            if stats.n < 2:
                raise InputError(
                    f"the {name} side has {plural(stats.n, 'image')}; FSD needs at least 2 per side: call "
                    f"update(images, real={name == 'real'}) first" + (" or pass real= reference statistics"
                                                                      if name == "real" else "")
                )
        # The interval is a setting of the metric: without rows (keep_rows=False, or sums restored from a
        # state_dict) the result has none and says why, instead of failing a training run.
        return _distance(real, fake, settings=bootstrap, explicit=False, fsd_inf=False, warn_missing=False)


class FSDMetric(torch.nn.Module):
    """Streaming FSD: feed batches of images with `update`, read the score with `compute`.

    ``segmenter``: the paper's UPP segmenter by default (``None`` / ``"upp"``), or any object following
    `fsd.segmenters.base.Segmenter` with RGB inputs. ``real``: optional reference statistics of the real
    side, computed or loaded once (saved ``.npz``, `Stats`, a baseline name such as ``"lsun_church"``, or a
    folder / source, segmented here, sharded under ``torch.distributed``). ``value_range``: how float
    images are quantized to uint8 (`fsd.preprocess.quantize`; ``(-1, 1)`` by default, ``(0, 1)``, or
    ``"uint8"`` for uint8 input); images then go through the same resize and crop as image files, so the
    metric equals `fsd.compute` on the same images saved as PNG.

    Distributed: each rank updates with its own images (any number per rank); `compute` all-reduces
    the int64 sums (every rank must call it) and returns the result of all images on every rank. The
    local states are left as they were. ``sync_on_compute=False`` computes from this rank's images only.

    The metric never enters train mode: the segmenter is not a registered submodule, so ``model.train()``
    on a module holding the metric does not reach it, and modules of the segmenter found in training
    mode are put back in eval mode before each use. ``metric.to(device)`` moves the states only.

    For Lightning and torchmetrics' conventions (``self.log("val/fsd", metric)``), use
    `fsd.torchmetrics.FrechetSegmentationDistance`, which shares this metric's core (`MetricCore`).

    >>> metric = fsd.FSDMetric(real="lsun_church")          # doctest: +SKIP
    >>> for z in latents:                                   # doctest: +SKIP
    ...     metric.update(G(z), real=False)
    >>> metric.compute().fsd                                # doctest: +SKIP
    >>> metric.reset()          # forgets the fake images, keeps the real statistics  # doctest: +SKIP
    """

    def __init__(
        self,
        segmenter: Segmenter | str | None = None,
        *,
        real=None,
        value_range: ValueRange = DEFAULT_VALUE_RANGE,
        device: str | torch.device | None = None,
        weights_dir: str | os.PathLike | None = None,
        progress: bool = False,
        sync_on_compute: bool = True,
        batch_size: int = 32,
        num_workers: int | None = None,
        keep_rows: bool = True,
        bootstrap: int = 0,
        ci_level: float = 0.95,
        bootstrap_seed: int = 0,
    ):
        super().__init__()
        from .api import RunOptions

        options = RunOptions(device=device, batch_size=batch_size, num_workers=num_workers,
                             weights_dir=weights_dir, progress=progress)
        # A plain attribute, kept out of the module tree on purpose: .train(), .to() and state_dict() never
        # reach the segmenter it holds.
        self.__dict__["core"] = MetricCore(segmenter, real, value_range, options, "FSDMetric")
        self.sync_on_compute = sync_on_compute
        self.keep_rows = keep_rows
        self.bootstrap = BootstrapSettings(bootstrap, ci_level, bootstrap_seed)
        # Each image's counts (fsd.rows), per side: plain attributes, never in state_dict.
        self._rows: dict[str, list[Rows]] = {side: [] for side in _SIDES}
        c = self.core.num_classes
        for side in _SIDES:
            self.register_buffer(f"{side}_n", torch.zeros((), dtype=torch.int64))
            self.register_buffer(f"{side}_count_sum", torch.zeros(c, dtype=torch.int64))
            self.register_buffer(f"{side}_count_outer_sum", torch.zeros((c, c), dtype=torch.int64))

    @property
    def segmenter(self) -> Segmenter:
        return self.core.segmenter

    @property
    def value_range(self) -> tuple[float, float] | None:
        return self.core.value_range

    @property
    def pixels_per_image(self) -> int:
        return self.core.pixels_per_image

    @property
    def reference(self) -> Stats | None:
        """The real statistics given up front (``real=``), or None."""
        return self.core.reference

    # torch.nn.Module.train would only flip flags here; the segmenter is never switched to training.
    def train(self, mode: bool = True) -> FSDMetric:
        self.training = mode
        return self

    def update(self, images: torch.Tensor, *, real: bool) -> None:
        """Add a batch ``(N, 3, H, W)`` (float in ``value_range``, or uint8) to the real or fake side."""
        self._add("real" if real else "fake", self.core.counts(images, real))

    def update_real(self, images: torch.Tensor) -> None:
        self.update(images, real=True)

    def update_fake(self, images: torch.Tensor) -> None:
        self.update(images, real=False)

    def _add(self, side: str, counts: torch.Tensor) -> None:
        n_state = getattr(self, f"{side}_n")
        total = int(n_state) + counts.shape[0]
        if total > max_images(self.pixels_per_image):
            raise InputError(
                f"FSDMetric.update: the {side} side would hold {total:,} images, more than the "
                f"{max_images(self.pixels_per_image):,} whose sums stay exact in int64; reset() or use a second metric"
            )
        n, count_sum, outer = MetricCore.sums(counts, n_state.device, self.pixels_per_image)
        if self.keep_rows:
            start = int(n_state)
            index = range(start, start + n)
            self._rows[side].append(Rows.from_dense(counts.cpu().numpy(), list(index), [f"{side}[{k}]" for k in index]))
        n_state += n
        getattr(self, f"{side}_count_sum").add_(count_sum)
        getattr(self, f"{side}_count_outer_sum").add_(outer)

    def local_stats(self, side: str) -> Stats:
        """This rank's updates of one side (``"real"`` or ``"fake"``), without the reference statistics."""
        n = int(getattr(self, f"{side}_n"))
        rows, note = None, "made with keep_rows=False (--no-rows)"
        if self.keep_rows:
            rows = Rows.concatenate(self._rows[side], self.core.num_classes)
            if len(rows) != n:  # the sums came from load_state_dict, which holds no rows
                rows, note = None, "restored from a state_dict, which holds the sums only"
        return self.core.stats(side, n, getattr(self, f"{side}_count_sum"), getattr(self, f"{side}_count_outer_sum"),
                               rows, note)

    def side_stats(self, side: str) -> Stats:
        """The statistics of one side: every rank's updates (when synced) plus the reference for ``"real"``."""
        stats = self.local_stats(side)
        world = current_world(None)
        if self.sync_on_compute and world.size > 1:
            stats = reduce_stats(stats, world, distinct_ranks=True)
        return self.core.with_reference(side, stats)

    def compute(self):
        """The `fsd.FSDResult` of everything added since the last `reset` (on every rank when synced)."""
        return self.core.result(self.side_stats("real"), self.side_stats("fake"), self.bootstrap)

    def reset(self, *, keep_real: bool = True) -> None:
        """Forget the fake images; with ``keep_real=False`` forget the real ones and the reference too."""
        sides = ("fake",) if keep_real else _SIDES
        for side in sides:
            for name in ("n", "count_sum", "count_outer_sum"):
                getattr(self, f"{side}_{name}").zero_()
            self._rows[side] = []
        if not keep_real:
            self.core.reference = None

    def extra_repr(self) -> str:
        fake = f"generated: {plural(int(self.fake_n), 'image')}"
        if self.reference is not None:
            real = f"real: {plural(self.reference.n, 'image')} (reference statistics given up front)"
        else:
            real = f"real: {plural(int(self.real_n), 'image')}"
        return f"segmenter={self.segmenter.name!r}, {real}, {fake}"


def _keep_eval(segmenter: object) -> None:
    """Put a segmenter that is, or holds, ``nn.Module``s back in eval mode if anything switched it."""
    modules = [segmenter] if isinstance(segmenter, torch.nn.Module) else [
        value for value in getattr(segmenter, "__dict__", {}).values() if isinstance(value, torch.nn.Module)
    ]
    for module in modules:
        if any(m.training for m in module.modules()):
            module.eval()
