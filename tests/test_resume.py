"""Interrupted runs resume from a checkpoint of the exact partial sums, and never mix in another run."""

import numpy as np
import pytest
from click.testing import CliRunner

import fsd
from fsd.cli import cli
from fsd.errors import InputError
from fsd.segmenters.labelmap import LabelMapSegmenter
from tests.conftest import ColorSegmenter, write_label_folder


class InterruptingSegmenter(ColorSegmenter):
    """Presses Ctrl-C on its ``stop_at``-th call."""

    def __init__(self, stop_at: int):
        super().__init__()
        self.stop_at = stop_at

    def segment(self, images):
        if self.calls + 1 == self.stop_at:
            self.calls += 1
            raise KeyboardInterrupt
        return super().segment(images)


def test_an_interrupted_run_resumes_to_the_same_statistics(image_folders, tmp_path):
    real, _ = image_folders
    options = dict(batch_size=2, num_workers=0, progress=False)
    reference = fsd.compute_stats(real, segmenter=ColorSegmenter(), **options)
    checkpoint = tmp_path / "run.partial"
    with pytest.raises(KeyboardInterrupt):
        fsd.compute_stats(real, segmenter=InterruptingSegmenter(stop_at=4), checkpoint=checkpoint,
                          checkpoint_every=2, **options)
    assert checkpoint.exists()  # 3 batches (6 images) were done and saved
    second = ColorSegmenter()
    with pytest.warns(UserWarning, match="resuming from checkpoint .* 6 images already done"):
        resumed = fsd.compute_stats(real, segmenter=second, checkpoint=checkpoint, checkpoint_every=2, **options)
    assert second.calls == 3  # only the remaining 6 images were segmented
    assert resumed.n == reference.n == 12
    assert np.array_equal(resumed.count_outer_sum, reference.count_outer_sum)
    assert np.array_equal(resumed.sigma, reference.sigma)
    # The per-image rows travel through the checkpoint too.
    assert resumed.rows.ids == reference.rows.ids and np.array_equal(resumed.rows.dense(), reference.rows.dense())
    assert not checkpoint.exists()


def test_a_checkpoint_of_another_run_is_refused(image_folders, tmp_path):
    real, _ = image_folders
    checkpoint = tmp_path / "run.partial"
    with pytest.raises(KeyboardInterrupt):
        fsd.compute_stats(real, segmenter=InterruptingSegmenter(stop_at=3), checkpoint=checkpoint,
                          checkpoint_every=1, batch_size=2, num_workers=0, progress=False)
    with pytest.raises(InputError, match="different run"):
        fsd.compute_stats(real, segmenter=ColorSegmenter(), checkpoint=checkpoint, num_samples=5,
                          batch_size=2, num_workers=0, progress=False)


class InterruptingLabelMaps(LabelMapSegmenter):
    def __init__(self, stop_at: int):
        super().__init__(4)
        self.calls, self.stop_at = 0, stop_at

    def segment(self, images):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return super().segment(images)


def test_cli_save_stats_resumes_from_its_partial_file(tmp_path):
    folder = write_label_folder(tmp_path / "labels", 6, classes=4, seed=0)
    out = tmp_path / "labels.npz"
    partial = tmp_path / "labels.npz.partial"  # where the CLI checkpoints --save-stats
    with pytest.raises(KeyboardInterrupt):
        fsd.compute_stats(folder, segmenter=InterruptingLabelMaps(stop_at=3), checkpoint=partial,
                          checkpoint_every=1, batch_size=2, num_workers=0, progress=False)
    assert partial.exists()
    args = ["--save-stats", folder, out, "--segmenter", "labelmap", "--num-classes", "4", "--num-workers", "0",
            "-q", "--batch-size", "2"]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "resuming from checkpoint" in result.stderr and "4 images already done" in result.stderr
    assert out.exists() and not partial.exists()
    fresh = fsd.compute_stats(folder, segmenter=LabelMapSegmenter(4), num_workers=0, progress=False)
    assert np.array_equal(fsd.Stats.load(out).count_outer_sum, fresh.count_outer_sum)
