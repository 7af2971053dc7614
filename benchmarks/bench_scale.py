"""Scale: time and memory of statistics, rows, files, shards and merge, and the report, against the number
of images N (default 10,000, 30,000 and 100,000), and how each grows with N.

The images are synthetic label maps read from an ``.npz`` through the ``labelmap`` segmenter, which only
passes labels through: segmentation costs nearly nothing, so what is measured is fsd's own machinery
(loader, class counts, exact sums, per-image rows, files, merge, bootstrap, per-class tests, HTML page).
The maps are uint8, 64 x 64 pixels by default, over 150 classes (``-`` plus 149 objects) with Zipf-like
prevalence, 2 to 8 classes per image in Voronoi-like regions; deterministic from ``--seed``. The second
set draws one common class (``class_5``) half as often, so the report has a real difference to find.

Every step runs in a fresh process, and its peak RSS growth is the peak resident set during the step less
the resident set before it. The peak is the kernel's, as ``ru_maxrss`` in bench_memory.py, but read as
``VmHWM`` after resetting it (``/proc/self/clear_refs``) when the step starts: a child's ``ru_maxrss``
starts at its parent's peak (the kernel carries it across fork and exec), which would hide every step
smaller than the parent. The label maps are written once into ``--workdir`` and kept.

    python benchmarks/bench_scale.py                          # N = 10k, 30k, 100k: about 10 min on 2 cores
    python benchmarks/bench_scale.py --counts 1000,3000 --bootstrap 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fsd  # noqa: E402
from benchmarks.common import PeakGrowth, load_average, machine_description  # noqa: E402

CLASSES = 150  # "-" (label 0, unused here) and class_1 .. class_149
MOST_PER_IMAGE = 8
HALVED = 5  # the class the second set draws half as often
SHARDS = 10
CHUNK = 1000  # label maps are generated in chunks of this many, each from its own seed: N' < N is a prefix
REPEATS = 3  # cheap steps (load, merge, FSD alone, per-class report): median of this many


# -- the label maps ------------------------------------------------------------------------------------
def label_maps(n: int, size: int, seed: int, halve: int | None = None) -> np.ndarray:
    """``(n, size, size, 1)`` uint8 label maps: per image 2 to 8 classes drawn without replacement by
    Zipf-like prevalence (Gumbel top-k), each the cell of a weighted Voronoi diagram on a half-resolution
    grid (blocks of 2 x 2 pixels). ``halve``: that class drawn with half its weight."""
    weight = 1.0 / np.arange(1, CLASSES) ** 0.8
    if halve is not None:
        weight[halve - 1] /= 2
    log_weight = np.log(weight)
    half = size // 2
    yy, xx = (a.ravel().astype(np.float32) for a in np.mgrid[0:half, 0:half])
    out = np.empty((n, size, size, 1), np.uint8)
    for chunk, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, chunk]))
        keys = log_weight[None] + rng.gumbel(size=(CHUNK, CLASSES - 1))
        top = (np.argpartition(-keys, MOST_PER_IMAGE, axis=1)[:, :MOST_PER_IMAGE] + 1).astype(np.uint8)
        held = rng.integers(2, MOST_PER_IMAGE + 1, size=CHUNK)
        points = rng.uniform(0, half, size=(CHUNK, MOST_PER_IMAGE, 2)).astype(np.float32)
        reach = rng.uniform(0.5, 1.5, size=(CHUNK, MOST_PER_IMAGE)).astype(np.float32) ** 2
        best = np.full((CHUNK, half * half), np.inf, np.float32)
        labels = np.zeros((CHUNK, half * half), np.uint8)
        for k in range(MOST_PER_IMAGE):
            d = ((yy[None] - points[:, k, :1]) ** 2 + (xx[None] - points[:, k, 1:]) ** 2) / reach[:, k:k + 1]
            d[held <= k] = np.inf
            closer = d < best
            best = np.where(closer, d, best)
            labels = np.where(closer, top[:, k:k + 1], labels)
        count = min(CHUNK, n - start)
        small = labels[:count].reshape(count, half, half)
        out[start:start + count, :, :, 0] = small.repeat(2, axis=1).repeat(2, axis=2)
    return out


def maps_path(workdir: Path, side: str, n: int, size: int, seed: int) -> Path:
    return workdir / f"labels-{side}-{n}-{size}px-seed{seed}.npz"


def write_label_maps(workdir: Path, counts: list[int], size: int, seed: int) -> None:
    """The label maps of both sets for every N (prefixes of the largest), unless already there."""
    workdir.mkdir(parents=True, exist_ok=True)
    for side, side_seed, halve in (("a", seed, None), ("b", seed + 1, HALVED)):
        missing = [n for n in counts if not maps_path(workdir, side, n, size, seed).exists()]
        if not missing:
            continue
        start = time.perf_counter()
        maps = label_maps(max(missing), size, side_seed, halve)
        for n in missing:
            path = maps_path(workdir, side, n, size, seed)
            part = path.with_suffix(".part.npz")
            np.savez(part, maps[:n])  # uncompressed: ArrayFileSource memory-maps it
            os.replace(part, path)
        print(f"  wrote label maps {side} for N = {', '.join(map(str, missing))} in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)


# -- measuring -----------------------------------------------------------------------------------------
def timed(action):
    start = time.perf_counter()
    value = action()
    return value, time.perf_counter() - start


def median_time(action, repeats: int = REPEATS):
    """The first call's value and the median seconds of ``repeats`` calls."""
    values, seconds = [], []
    for _ in range(repeats):
        value, s = timed(action)
        values.append(value)
        seconds.append(s)
    return values[0], float(np.median(seconds))


def segmenter(size: int) -> fsd.LabelMapSegmenter:
    return fsd.LabelMapSegmenter(CLASSES, size=size)


class Paths:
    def __init__(self, args, n: int):
        self.maps_a = maps_path(args.workdir, "a", n, args.size, args.seed)
        self.maps_b = maps_path(args.workdir, "b", n, args.size, args.seed)
        self.folder = args.workdir / f"run-{n}"
        self.stats_a, self.stats_b = self.folder / "a.npz", self.folder / "b.npz"
        self.shards = [self.folder / f"a-shard{i}of{SHARDS}.npz" for i in range(SHARDS)]
        self.merged, self.html = self.folder / "a-merged.npz", self.folder / "html"


def compute(path: Path, args, **kwargs) -> fsd.Stats:
    stats = fsd.compute_stats(str(path), segmenter=segmenter(args.size), num_workers=args.num_workers,
                              progress=False, **kwargs)
    stats.rows  # joined from the batches' parts, as saving or any use of them does
    return stats


def step_stats(args, paths: Paths) -> dict:
    paths.folder.mkdir(parents=True, exist_ok=True)
    with PeakGrowth() as peak:
        stats, first_s = timed(lambda: compute(paths.maps_a, args))
    seconds = [first_s] + [timed(lambda: compute(paths.maps_a, args))[1] for _ in range(args.stats_repeats - 1)]
    rows = stats.rows
    _, save_s = median_time(lambda: stats.save(paths.stats_a))
    compute(paths.maps_b, args).save(paths.stats_b)  # for the report
    return {"n": stats.n, "seconds": float(np.median(seconds)), "runs": seconds, "rss_growth_mb": peak.mb,
            "method": PeakGrowth.method, "classes_per_image": rows.nnz / stats.n, "observed": stats.observed_classes(),
            "rows_mib": rows.nbytes / 2**20, "save_s": save_s, "file_mib": paths.stats_a.stat().st_size / 2**20,
            "workers": fsd.sources.default_num_workers() if args.num_workers is None else args.num_workers}


def step_load(args, paths: Paths) -> dict:
    with PeakGrowth() as peak:
        stats = fsd.Stats.load(paths.stats_a)
    _, seconds = median_time(lambda: fsd.Stats.load(paths.stats_a))
    return {"seconds": seconds, "rss_growth_mb": peak.mb, "n": stats.n}


def step_shards(args, paths: Paths) -> dict:
    start = time.perf_counter()
    for i, path in enumerate(paths.shards):
        compute(paths.maps_a, args, shard=(i, SHARDS)).save(path)
    return {"seconds": time.perf_counter() - start}


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def step_merge(args, paths: Paths) -> dict:
    def merge() -> fsd.Stats:
        merged = fsd.merge_stats(paths.shards)
        merged.rows  # joined, as saving does
        return merged

    with PeakGrowth() as peak:
        merged = merge()
    _, seconds = median_time(merge)
    # Exactness: the merge of the 10 shards is the single run, sums and rows, and the very same file.
    single = fsd.Stats.load(paths.stats_a)
    assert merged.n == single.n, (merged.n, single.n)
    assert np.array_equal(merged.count_sum, single.count_sum), "count_sum differs"
    assert np.array_equal(merged.count_outer_sum, single.count_outer_sum), "count_outer_sum differs"
    for field in ("indptr", "classes", "counts", "index"):
        assert np.array_equal(getattr(merged.rows, field), getattr(single.rows, field)), f"rows.{field} differs"
    assert merged.rows.ids == single.rows.ids, "rows.ids differ"
    merged.save(paths.merged)
    left, right = npz_arrays(paths.merged), npz_arrays(paths.stats_a)
    assert sorted(left) == sorted(right), (sorted(set(left) ^ set(right)))
    for key in left:
        assert left[key].dtype == right[key].dtype and np.array_equal(left[key], right[key]), f"file array {key} differs"
    return {"seconds": seconds, "rss_growth_mb": peak.mb, "exact": True}


def step_report(args, paths: Paths) -> dict:
    from fsd.report import VerdictRule, class_report

    (real, fake), load_s = timed(lambda: (fsd.Stats.load(paths.stats_a), fsd.Stats.load(paths.stats_b)))

    def per_class(result):  # what `fsd report` prints after the score (cli._print_result)
        report = class_report(result.real, result.fake, sort="real", rule=VerdictRule(), level=result.ci_level)
        return report, report.summary() + report.format_table(30)

    with PeakGrowth() as peak:  # the score with its bootstrap, then the per-class table
        result, with_bootstrap_s = timed(lambda: fsd.distance(real, fake, bootstrap=args.bootstrap))
        per_class(result)
    growth = peak.mb
    plain, fsd_s = median_time(lambda: fsd.distance(real, fake, bootstrap=0))
    (report, _), class_s = median_time(lambda: per_class(result))
    halved = next(r for r in report.rows if r.index == HALVED)
    out = {"load_both_s": load_s, "fsd_s": fsd_s, "bootstrap_s": with_bootstrap_s - fsd_s, "class_s": class_s,
           "rss_growth_mb": growth, "fsd": plain.fsd, "ci": list(result.fsd_ci), "halved_verdict": halved.verdict,
           "halved_q": halved.q, "halved_real": halved.real, "halved_fake": halved.fake,
           "verdicts": sum(r.verdict is not None for r in report.rows)}
    if args.html:
        shutil.rmtree(paths.html, ignore_errors=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # none expected; a note would show on the page itself
            _, html_s = timed(lambda: fsd.write_html(result, paths.html, segmenter=segmenter(args.size),
                                                     command="bench_scale.py"))
        out["html_s"] = html_s
        out["html_files"] = sum(1 for p in paths.html.rglob("*") if p.is_file())
    return out


STEPS = {"stats": step_stats, "load": step_load, "shards": step_shards, "merge": step_merge, "report": step_report}


def run_child(args, step: str, n: int) -> dict:
    command = [sys.executable, __file__, "--child", step, "--child-n", str(n), "--size", str(args.size),
               "--seed", str(args.seed), "--workdir", str(args.workdir), "--bootstrap", str(args.bootstrap),
               "--stats-repeats", str(args.stats_repeats)]
    if args.num_workers is not None:
        command += ["--num-workers", str(args.num_workers)]
    if not args.html:
        command.append("--no-html")
    print(f"  N = {n:,}: {step} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"step {step} at N = {n} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- how it grows --------------------------------------------------------------------------------------
def exponent(counts: list[int], values: list[float]) -> float | None:
    """The slope of log(value) against log(N), least squares (None with fewer than 2 positive values)."""
    pairs = [(n, v) for n, v in zip(counts, values) if v > 0]
    if len(pairs) < 2:
        return None
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


def growth_line(name: str, counts: list[int], values: list[float], unit: str, small: float) -> str:
    k = exponent(counts, values)
    ends = f"{counts[0]:,}: {values[0]:.3g} {unit} -> {counts[-1]:,}: {values[-1]:.3g} {unit}"
    if k is None:
        return f"  {name}: -  ({ends})"
    note = "; too small to mean much: fixed costs dominate" if max(values) < small else ""
    return f"  {name}: ~N^{k:.2f}  ({ends}{note})"


def threads_line() -> str:
    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    blas_text = f"{blas} (OPENBLAS_NUM_THREADS/OMP_NUM_THREADS)" if blas else f"unset (OpenBLAS default: {os.cpu_count()})"
    return f"threads: torch {torch.get_num_threads()}, NumPy's BLAS {blas_text}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="10000,30000,100000", help="comma-separated numbers of images N")
    parser.add_argument("--size", type=int, default=64, help="label maps are SIZE x SIZE (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=200,
                        help="replicates timed for the report (fsd report's default is 1000; its time is projected)")
    parser.add_argument("--num-workers", type=int, default=None, help="loader workers (default: fsd's default)")
    parser.add_argument("--stats-repeats", type=int, default=3, help="runs of the statistics per N (median shown)")
    parser.add_argument("--no-html", dest="html", action="store_false", help="skip the HTML page with examples")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fsd-bench-scale")
    parser.add_argument("--keep", action="store_true", help="keep the statistics files of each N in --workdir")
    parser.add_argument("--child", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size < 2 or args.size % 2:
        parser.error("--size must be even and at least 2")
    if args.child:
        print(json.dumps(STEPS[args.child](args, Paths(args, args.child_n))))
        return

    counts = sorted(int(c) for c in args.counts.split(","))
    print(machine_description(torch.device("cpu")))
    print(threads_line())
    started = time.perf_counter()
    write_label_maps(args.workdir, counts, args.size, args.seed)
    results = {}
    for n in counts:
        results[n] = {step: run_child(args, step, n) for step in ("stats", "load", "shards", "merge", "report")}
        if not args.keep:
            shutil.rmtree(Paths(args, n).folder, ignore_errors=True)
    stats = [results[n]["stats"] for n in counts]
    workers = stats[0]["workers"]
    print(f"\nLabel maps {args.size} x {args.size} ({args.size**2:,} pixels), {CLASSES} classes, through the labelmap "
          f"segmenter from a memory-mapped .npz; {workers} loader workers. Times: statistics the median of "
          f"{args.stats_repeats} runs; save, load, merge, FSD alone and the per-class report the median of {REPEATS}; "
          f"the rest one run. Peak RSS growth: of the main process, by {stats[0]['method']}, during the step's "
          "first run.")

    print("\nStatistics with per-image rows (fsd.compute_stats)")
    print("| N | classes per image | time | images/s | peak RSS growth | rows in memory |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, s in zip(counts, stats):
        runs = ", ".join(f"{t:.1f}" for t in s["runs"])
        print(f"| {n:,} | {s['classes_per_image']:.2f} | {s['seconds']:.2f} s ({runs}) | {n / s['seconds']:,.0f} | "
              f"{s['rss_growth_mb']:.1f} MB | {s['rows_mib']:.1f} MiB |")

    print("\nFiles, shards and merge")
    print(f"| N | save | .npz | load (+ exactness check) | load RSS growth | {SHARDS} shards computed | "
          f"merge of {SHARDS} files | merge RSS growth | exact |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n in counts:
        s, lo, sh, m = (results[n][k] for k in ("stats", "load", "shards", "merge"))
        print(f"| {n:,} | {s['save_s']:.2f} s | {s['file_mib']:.1f} MiB | {lo['seconds']:.2f} s | "
              f"{lo['rss_growth_mb']:.1f} MB | {sh['seconds']:.1f} s | {m['seconds']:.2f} s | "
              f"{m['rss_growth_mb']:.1f} MB | {'yes' if m['exact'] else 'NO'} |")
    print("exact: yes (each N: merged sums, rows and saved file equal the single run's, array for array)")

    print(f"\nReport between the two sets (what `fsd report A.npz B.npz` computes; {args.bootstrap} bootstrap "
          "replicates timed, 1000 projected)")
    html_head = " HTML page with examples |" if args.html else ""
    print(f"| N | load both | FSD alone | bootstrap per replicate | bootstrap, 1000 replicates (projected) | per-class "
          f"tests + table | report RSS growth |{html_head} FSD (95% CI) | class_{HALVED}: real -> second, verdict (q) |")
    print("|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.html else "") + "---|---|")
    for n in counts:
        r = results[n]["report"]
        per = r["bootstrap_s"] / args.bootstrap if args.bootstrap else float("nan")
        html = f" {r['html_s']:.2f} s |" if args.html else ""
        q = "-" if r["halved_q"] is None else f"{r['halved_q']:.1e}"
        print(f"| {n:,} | {r['load_both_s']:.2f} s | {r['fsd_s'] * 1000:.1f} ms | {per:.3f} s | {per * 1000:.0f} s | "
              f"{r['class_s'] * 1000:.0f} ms | {r['rss_growth_mb']:.0f} MB |{html} {r['fsd']:.3f} "
              f"({r['ci'][0]:.3f} to {r['ci'][1]:.3f}) | {r['halved_real']:.3f}% -> {r['halved_fake']:.3f}%, "
              f"{r['halved_verdict'] or 'none'} ({q}) |")

    print("\nHow each grows with N (least-squares slope of log value against log N)")
    series = [
        ("statistics", [s["seconds"] for s in stats], "s", 0.5),
        ("statistics, peak RSS growth", [s["rss_growth_mb"] for s in stats], "MB", 0),
        ("rows in memory", [s["rows_mib"] for s in stats], "MiB", 0),
        (".npz file", [s["file_mib"] for s in stats], "MiB", 0),
        ("save", [s["save_s"] for s in stats], "s", 0.05),
        ("load + exactness check", [results[n]["load"]["seconds"] for n in counts], "s", 0.05),
        (f"{SHARDS} shards computed", [results[n]["shards"]["seconds"] for n in counts], "s", 0.5),
        ("merge", [results[n]["merge"]["seconds"] for n in counts], "s", 0.05),
        ("merge, peak RSS growth", [results[n]["merge"]["rss_growth_mb"] for n in counts], "MB", 0),
        ("FSD alone", [results[n]["report"]["fsd_s"] for n in counts], "s", 0.05),
        ("bootstrap per replicate", [results[n]["report"]["bootstrap_s"] / max(args.bootstrap, 1) for n in counts],
         "s", 0.005),
        ("per-class tests + table", [results[n]["report"]["class_s"] for n in counts], "s", 0.05),
    ]
    if args.html:
        series.append(("HTML page", [results[n]["report"]["html_s"] for n in counts], "s", 0.5))
    for name, values, unit, small in series:
        print(growth_line(name, counts, values, unit, small))
    print(f"\nwhole run {time.perf_counter() - started:.0f} s; load average at end: {load_average()}")


if __name__ == "__main__":
    main()
