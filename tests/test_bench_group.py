"""benchmarks/bench_group.py in its smallest mode: it runs, and its table and memory lines
say what they should (parameter counts, saved activations equal to nn.Conv2d's)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_group.py"
SMALLEST = ["--shapes", "8/4", "--rounds", "1", "--min-time", "0", "--batch", "1", "--threads", "1"]
SMALLEST += ["--malloc-default"]  # malloc tuning is process-wide: not in the test process


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_group", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_group"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    del sys.modules["bench_group"]
    torch.set_num_threads(threads)


def test_smallest_run_prints_its_table(bench, capsys, tmp_path: Path) -> None:
    md = tmp_path / "group.md"
    assert bench.main([*SMALLEST, "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in md.read_text().splitlines() if line.startswith("| GroupConv2d")]
    assert len(rows) == 3 * 2 * 2  # groups x precisions x modes
    assert md.read_text() in out
    # Free parameters: out_channels / |G| kernels of in_channels x 3 x 3; plain 8 x 8 x 9.
    expected = {"r": 2 * 8 * 9, "hr": 1 * 8 * 9, "hv": 2 * 8 * 9}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        key = re.fullmatch(r"GroupConv2d\((\w+)\)", cells[0]).group(1)
        assert cells[1] == "1x8x4x4" and cells[2] in ("fp32", "bf16-cl")
        assert cells[3] in ("train", "eval")
        assert float(cells[4]) > 0 and float(cells[5]) > 0 and float(cells[6]) >= 0
        assert float(cells[7]) > 0  # the paired ratio (median of per-round ratios)
        assert cells[8] == f"{expected[key]} / 576"
    # A group convolution saves for backward exactly the activations a plain one saves.
    saved = re.findall(r"memory (\S+)\s+8/4 (\S+)\s+saved activations\s+(\S+) MiB", out)
    assert len(saved) == 4 * 2
    for precision in ("fp32", "bf16-cl"):
        acts = {name: mib for name, p, mib in saved if p == precision}
        assert set(acts.values()) == {acts["nn.Conv2d"]}, acts
    kernels = re.findall(r"kernel GroupConv2d\((\w+)\)\s+8/4 (\S+)\s+expansion", out)
    assert sorted(kernels) == sorted((g, p) for g in expected for p in ("fp32", "bf16-cl"))


def test_escnn_flag_without_escnn_says_it_skips(bench, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "escnn", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "e2cnn", None)
    args = [*SMALLEST, "--groups", "r", "--precisions", "fp32", "--no-memory", "--escnn"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "escnn/e2cnn: neither is installed; skipping the R2Conv comparison" in out
    assert "R2Conv" not in out.split("skipping the R2Conv comparison", 1)[1]


@pytest.mark.parametrize(
    "bad", [["--groups", "x"], ["--shapes", "12/4"], ["--precisions", "fp16"], ["--shapes", "8"]]
)
def test_usage_errors_exit_2(bench, bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(bad)
    assert exc.value.code == 2
