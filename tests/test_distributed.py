"""torch.distributed with the gloo backend on 2 CPU processes: results equal the single-process ones.

One spawned pair of processes runs every in-process check (starting processes is the slow part); two
``torchrun`` runs check the CLI.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner
from PIL import Image

import fsd
import fsd.cli
from fsd.distributed import RankInputFailed, World
from fsd.errors import ImageReadError
from tests.conftest import ColorSegmenter, random_photo, write_folder
from tests.test_generators import ToyGenerator
from tests.synthetic import synthetic_upp_segmenter
from tests.test_metric import float_images

WORLD = 2
TIMEOUT_S = 120


class CountingSegmenter(ColorSegmenter):
    """ColorSegmenter that counts the images it segments, to prove each rank did only its share."""

    def __init__(self):
        super().__init__(32)
        self.images = 0

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        self.images += images.shape[0]
        return super().segment(images)


def _same(a: fsd.Stats, b: fsd.Stats, same_ids: bool = True) -> None:
    assert a.n == b.n
    assert np.array_equal(a.count_sum, b.count_sum) and np.array_equal(a.count_outer_sum, b.count_outer_sum)
    # The per-image rows travel too, in the single-process order (by source index).
    ra, rb = a.rows, b.rows
    assert (ra.ids == rb.ids or not same_ids) and np.array_equal(ra.index, rb.index)
    assert np.array_equal(ra.indptr, rb.indptr) and np.array_equal(ra.classes, rb.classes)
    assert np.array_equal(ra.counts, rb.counts)


def _worker(rank: int, init_file: str, data: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        _checks(rank, Path(data))
    finally:
        dist.destroy_process_group()


def _checks(rank: int, data: Path) -> None:
    run = dict(num_workers=0, progress=False)
    real, fake = data / "real", data / "fake"

    # 1. A folder, whole and as the paper's subset: sharded, then equal to the single-process result.
    for num_samples in (None, 7):
        seg = CountingSegmenter()
        shared = fsd.compute_stats(real, segmenter=seg, num_samples=num_samples, batch_size=2, **run)
        n = 13 if num_samples is None else num_samples
        assert seg.images == len(range(rank, n, WORLD))
        alone = fsd.compute_stats(real, segmenter=ColorSegmenter(32), num_samples=num_samples,
                                  distributed=False, **run)
        _same(shared, alone)

    # 2. A generator: sample k on rank k % 2; the same set as one process makes.
    G = ToyGenerator(40, 48)
    seg = CountingSegmenter()
    shared = fsd.compute_stats(generator=G, num_samples=11, seed=3, batch_size=4, segmenter=seg, **run)
    assert seg.images == len(range(rank, 11, WORLD))
    _same(shared, fsd.compute_stats(generator=G, num_samples=11, seed=3, segmenter=ColorSegmenter(32),
                                    distributed=False, **run))

    # 3. compute(): the same score on every rank, equal to one process's.
    result = fsd.compute(real, fake, segmenter=ColorSegmenter(32), **run)
    alone = fsd.compute(real, fake, segmenter=ColorSegmenter(32), distributed=False, **run)
    assert result.fsd == alone.fsd
    assert result.fsd_ci == alone.fsd_ci and result.fsd_ci is not None  # the bootstrap sees the same rows
    scores = [None] * WORLD
    dist.all_gather_object(scores, result.fsd)
    assert scores == [alone.fsd] * WORLD

    # 4. The metric with unequal numbers of images per rank (5 + 2 fake, 6 + 0 real).
    images_fake, images_real = float_images(7, seed=11), float_images(6, seed=12)
    metric = fsd.FSDMetric(ColorSegmenter(32), bootstrap=200)
    if rank == 0:
        metric.update(images_fake[:5], real=False)
        metric.update(images_real, real=True)
    else:
        metric.update(images_fake[5:], real=False)
    synced = metric.compute()
    single = fsd.FSDMetric(ColorSegmenter(32), sync_on_compute=False, bootstrap=200)
    single.update(images_fake, real=False)
    single.update(images_real, real=True)
    single_result = single.compute()
    assert synced.fsd == single_result.fsd and (synced.real.n, synced.fake.n) == (6, 7)
    assert synced.fsd_ci is not None and synced.fsd_ci == single_result.fsd_ci
    assert synced.fake.rows.ids == tuple([f"rank0/fake[{k}]" for k in range(5)] + ["rank1/fake[0]", "rank1/fake[1]"])
    assert int(metric.fake_n) == (5 if rank == 0 else 2)  # local states untouched by the sync
    # a reference given to the metric counts once, not once per rank
    with_reference = fsd.FSDMetric(ColorSegmenter(32), real=real, num_workers=0)
    with_reference.update(images_fake[rank::WORLD], real=False)
    assert with_reference.compute().real.n == 13

    # 5. Samples written by both ranks make the folder one process writes.
    out = data / "samples"
    paths = fsd.save_samples(G, out, num_samples=5, seed=3, progress=False)
    dist.barrier()
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]
    _same(fsd.compute_stats(out, segmenter=ColorSegmenter(32), distributed=False, **run),
          fsd.compute_stats(generator=G, num_samples=5, seed=3, segmenter=ColorSegmenter(32), distributed=False,
                            **run), same_ids=False)

    # 6. A bad image in rank 1's share: rank 1 raises its error, rank 0 hears of it; nobody hangs.
    broken = data / "broken"
    try:
        fsd.compute_stats(broken, segmenter=ColorSegmenter(32), **run)
    except ImageReadError as exc:
        assert rank == 1 and "b_bad.png" in str(exc)
    except RankInputFailed as exc:
        assert rank == 0 and exc.rank == 1 and "b_bad.png" in str(exc)
    else:
        raise AssertionError("the bad image went unnoticed")

    # 7. The paper's architecture (UPP, synthetic weights, 64 x 64 input): the same integer sums and
    #    rows from 2 processes as from one, at one thread each (float32 rounding follows the thread
    #    count) and with different batch sizes on the two sides.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        upp = synthetic_upp_segmenter(64)
        shared = fsd.compute_stats(real, segmenter=upp, batch_size=3, **run)
        alone = fsd.compute_stats(real, segmenter=upp, distributed=False, batch_size=13, **run)
        _same(shared, alone)
        assert len(np.unique(alone.rows.classes)) > 2  # the label maps are not one class everywhere
    finally:
        torch.set_num_threads(threads)


def test_two_gloo_processes_equal_one(tmp_path):
    write_folder(tmp_path / "real", 13, seed=0)
    write_folder(tmp_path / "fake", 10, seed=1)
    broken = tmp_path / "broken"
    broken.mkdir()
    rng = np.random.default_rng(2)
    for name in ("a.png", "c.png", "d.png"):
        random_photo(rng, 40, 40).save(broken / name)
    (broken / "b_bad.png").write_bytes(b"not a png")  # second in order: index 1, so rank 1's share
    context = mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s (a hang)")


def test_world_shard_and_single_process_defaults():
    assert World(1, 3).shard(list(range(10))) == [1, 4, 7]
    assert fsd.distributed.current_world() == World(0, 1)
    with pytest.raises(fsd.InputError, match="not initialized"):
        fsd.distributed.current_world(True)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return subprocess.run([*command, "--standalone", f"--nproc_per_node={WORLD}", "-m", "fsd", *args],
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd, env=_env())


def _label_folder(folder: Path, values: list[int]) -> None:
    folder.mkdir()
    for k, value in enumerate(values):
        image = np.zeros((64, 64), np.uint8)
        image[:, : 16 * (value + 1)] = 1
        Image.fromarray(image).save(folder / f"{k}.png")


LABELMAP = ["--segmenter", "labelmap", "--num-classes", "2", "--num-workers", "0", "-q"]


def test_torchrun_cli_prints_once_and_equals_one_process(tmp_path):
    _label_folder(tmp_path / "real", [0, 1, 2, 3, 3])
    _label_folder(tmp_path / "fake", [1, 1, 2])
    single = CliRunner().invoke(fsd.cli.cli, [str(tmp_path / "real"), str(tmp_path / "fake"), *LABELMAP, "--json"])
    assert single.exit_code == 0, single.output
    shared = _torchrun(["real", "fake", *LABELMAP, "--json"], tmp_path)
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout.count("\n") == 1  # one JSON line: rank 1 printed nothing
    assert json.loads(shared.stdout)["fsd"] == json.loads(single.stdout)["fsd"]
    assert json.loads(shared.stdout)["real"]["n"] == 5
    # float32 rounding depends on the thread count: said once, by rank 0, on stderr
    assert shared.stderr.count("under torchrun on the CPU each process segments with 1 thread") == 1, shared.stderr
    assert "OMP_NUM_THREADS" in shared.stderr
    # both ranks ran the same way: one description of the run, with the thread count of each process
    environment = json.loads(shared.stdout)["real"]["environment"]
    assert len(environment) == 1 and environment[0].endswith(", cpu (" + platform.machine() + "), 1 thread, float32")


def test_torchrun_cli_error_is_printed_once(tmp_path):
    _label_folder(tmp_path / "real", [0, 1])
    result = _torchrun(["real", "missing", *LABELMAP], tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("no such file or folder") == 1, result.stderr
    assert result.stdout == ""

