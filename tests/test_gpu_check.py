"""benchmarks/gpu_check.sh: its usage errors, and a --dry-run of every part on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize(
    "args",
    [(), ("--dry-run",), ("out", "--fast"), ("a", "b", "c"), ("out", "--parts")]
    + [("out", "--parts", "tests,bench"), ("out", "--parts", "")],
)
def test_usage_errors_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 2 and "usage: bash benchmarks/gpu_check.sh" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything is made


def test_parts_runs_only_the_parts_named(tmp_path: Path) -> None:
    out = tmp_path / "check"
    proc = _run(str(out), "--dry-run", "--parts", "bench_group", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [line.split()[0] for line in (out / "summary.txt").read_text().splitlines()]
    assert names == ["env", "bench_group", "total"]
    assert "|" in (out / "bench_group.md").read_text()


@pytest.mark.slow
def test_dry_run_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "check"
    proc = _run(str(out), "--dry-run", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.txt").read_text().splitlines()
    parts = {line.split()[0]: line for line in summary}
    expected = ["env", "tests", "bench_symmetric", "bench_twist", "bench_group", "compare"]
    expected += ["compare_resnet", "bench_escnn"]
    assert all(" ok " in parts[name] for name in expected), summary
    assert parts["total"].split()[1] == "0"
    for table in ("bench_symmetric.md", "bench_group.md", "bench_escnn.md"):
        assert "|" in (out / table).read_text(), table
    for run in ("compare-cnn", "compare-resnet"):
        assert (out / run / "results.json").is_file()
        assert not (out / run / "checkpoints").exists()
