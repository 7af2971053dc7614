"""benchmarks/gpu.sh, the GPU check, run as a user would: its smoke mode on the CPU goes through every section
of the real script (the UPP architecture with synthetic weights), and its bookkeeping (refusals, a failed
section marked in the report, the exit status) is checked with a stand-in Python."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.sh"
HEADINGS = ("## Machine", "## Throughput", "## Invariance", "## The cost of deterministic algorithms",
            "## Decoding against segmentation", "## Memory against N")


def _run(args: list[str], python: str = sys.executable, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_smoke_run_writes_every_section(tmp_path):
    report = tmp_path / "out" / "report.md"
    proc = _run(["--smoke", "--report", str(report), "--workdir", str(tmp_path / "work")])
    log = report.with_suffix(".log")
    assert proc.returncode == 0, proc.stderr + (log.read_text() if log.exists() else "")
    text = report.read_text()
    for heading in HEADINGS:
        assert heading in text, heading
    assert "FAILED" not in text
    assert "Labels independent of batch size, order and run: yes." in text
    assert "Statistics independent of batch size, workers and shards: yes." in text
    assert "| float32 |" in text and "| bfloat16 |" in text
    assert "every section ran." in text.splitlines()[-1]
    assert proc.stdout == ""  # the report goes to its file; progress to stderr
    assert f"report in {report}" in proc.stderr


def _stand_in_python(tmp_path: Path, failing: str) -> str:
    """A 'python' that prints a section heading for each section and fails for one of them."""
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\n"
                    "section=''\n"
                    "while [ $# -gt 0 ]; do [ \"$1\" = --section ] && section=$2; shift; done\n"
                    f"if [ \"$section\" = {failing} ]; then echo 'Traceback: boom' >&2; exit 3; fi\n"
                    "echo \"## section $section\"\n")
    fake.chmod(0o755)
    return str(fake)


def test_a_failed_section_is_marked_and_the_others_still_run(tmp_path):
    report = tmp_path / "report.md"
    proc = _run(["--smoke", "--report", str(report), "--workdir", str(tmp_path / "w")],
                python=_stand_in_python(tmp_path, "decode"), timeout=60)
    assert proc.returncode == 1
    text = report.read_text()
    assert "**FAILED: section decode exited with status 3" in text
    for name in ("machine", "throughput", "invariance", "determinism", "memory"):
        assert f"## section {name}" in text
    assert text.splitlines()[-1].endswith("failed: decode.")
    assert "Traceback: boom" in report.with_suffix(".log").read_text()


def test_bad_arguments_are_refused(tmp_path):
    proc = _run(["--bogus"], timeout=60)
    assert proc.returncode == 2
    assert "unknown argument '--bogus'" in proc.stderr
    proc = _run(["--report"], timeout=60)
    assert proc.returncode == 2 and "--report needs a file name" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so gpu.sh does not refuse")
def test_without_a_gpu_it_refuses_unless_smoke(tmp_path):
    report = tmp_path / "report.md"
    proc = _run(["--report", str(report)], timeout=120)
    assert proc.returncode == 2
    assert "no CUDA GPU is visible" in proc.stderr and "--smoke" in proc.stderr
    assert not report.exists()
