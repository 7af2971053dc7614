"""Synthetic scenes with a known distribution: per-image class pixel counts, or the label maps behind them.

Each image holds class ``c`` with probability ``prevalence[c]``; the classes present get areas in
proportion to Gamma(``shape``) draws scaled by ``area[c]`` next to a background (label 0), and the
image's P pixels are shared among them by a multinomial draw. So most images hold 0% of a rare class
and a few hold a lot, the heavy-tailed per-class areas of real segmentations. Used by the tests of
`fsd.uncertainty` and by benchmarks/bench_coverage.py, where the population value comes from a very
large sample.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class SceneModel:
    prevalence: np.ndarray  # (K,) probability that class c + 1 occurs in an image
    area: np.ndarray  # (K,) relative area of class c + 1 when it occurs
    shape: float = 0.7  # Gamma shape of the area draws: small = heavy tails
    background: float = 1.0  # relative area of label 0
    pixels: int = 65536

    @classmethod
    def default(cls, classes: int = 40, seed: int = 0) -> SceneModel:
        """Classes with Zipf-like prevalence (0.9 down to about 0.02) and varied areas."""
        rng = np.random.default_rng(seed)
        rank = np.arange(1, classes + 1)
        prevalence = np.clip(0.9 / rank**0.8, 0.01, 0.95)
        area = rng.uniform(0.3, 3.0, size=classes)
        return cls(prevalence, area)

    @property
    def num_classes(self) -> int:
        """Including label 0."""
        return len(self.prevalence) + 1

    def class_names(self) -> tuple[str, ...]:
        return ("-",) + tuple(f"class_{c}" for c in range(1, self.num_classes))

    def counts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, K + 1) int64 pixel counts, each row summing to ``pixels``."""
        k = len(self.prevalence)
        present = rng.random((n, k)) < self.prevalence
        weights = rng.gamma(self.shape, 1.0, size=(n, k)) * self.area * present
        weights = np.concatenate([np.full((n, 1), self.background), weights], axis=1)
        return rng.multinomial(self.pixels, weights / weights.sum(axis=1, keepdims=True)).astype(np.int64)

    def label_maps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, S, S) uint8 label maps (S * S = ``pixels``) with exactly the counts of `counts`: each class a
        run of pixels in raster order."""
        side = int(round(self.pixels**0.5))
        if side * side != self.pixels or self.num_classes > 256:
            raise ValueError("label maps need a square pixel count and at most 256 classes")
        counts = self.counts(rng, n)
        labels = np.repeat(np.tile(np.arange(self.num_classes, dtype=np.uint8), n), counts.reshape(-1))
        return labels.reshape(n, side, side)

    def with_area(self, c: int, factor: float) -> SceneModel:
        """The same scenes with class ``c``'s area (when present) scaled by ``factor``."""
        area = self.area.copy()
        area[c - 1] *= factor
        return replace(self, area=area)

    def with_prevalence(self, c: int, factor: float) -> SceneModel:
        prevalence = self.prevalence.copy()
        prevalence[c - 1] = min(1.0, prevalence[c - 1] * factor)
        return replace(self, prevalence=prevalence)
