"""``symconv compare`` end to end: output files, resume, errors, DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from symconv.cli import main
from symconv.compare.transforms import TRANSFORMS

# One thread: bitwise-reproducible numbers whatever the machine's load (see auto_threads).
QUICK = [
    "--limit",
    "200",
    "--width",
    "4",
    "--batch-size",
    "50",
    "--no-progress",
    "--device",
    "cpu",
    "--threads",
    "1",
]


ALL_VARIANTS = "plain,sym,sym-inv,twist"


# These tests check numbers, not speed (see the one_thread fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


TOP_KEYS = {
    "format",
    "status",
    "command",
    "config",
    "data",
    "environment",
    "seeds",
    "transforms",
    "variants",
    "started",
    "finished",
    "elapsed_s",
    "plots",
}
RUN_KEYS = {
    "variant",
    "run",
    "seed",
    "params",
    "description",
    "converted",
    "skipped",
    "accuracy",
    "images_per_s",
    "train_seconds",
    "peak_memory_mb",
    "memory_kind",
    "history",
    "diverged",
}


def _compare(*args: str) -> int:
    return main(["compare", *QUICK, *args])


def _load(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_compare_writes_every_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["--epochs", "1", "--runs", "2", "--limit", "100", "--variants", ALL_VARIANTS]
    assert _compare(*args, "--out", str(out)) == 0
    printed = capsys.readouterr().out
    variants = ALL_VARIANTS.split(",")

    # the terminal table: a header with every transform, one row per variant
    header = next(line for line in printed.splitlines() if line.startswith("variant"))
    assert header.split() == ["variant", "params", *TRANSFORMS, "img/s", "peak", "MB"]
    for v in variants:
        assert any(line.split()[:1] == [v] for line in printed.splitlines())

    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "results.json",
        "results.csv",
        "table.md",
        "checkpoints",
    } <= names
    res = _load(out)
    assert res["format"] == "symconv-compare/1" and res["status"] == "complete"
    assert set(res) == TOP_KEYS
    assert res["seeds"] == [0, 1]
    assert res["config"]["settings"]["epochs"] == 1
    assert res["config"]["variants"] == variants
    assert res["data"]["train"] == 100 and res["data"]["test"] == 100
    env = res["environment"]
    assert env["torch"] == torch.__version__ and env["world_size"] == 1
    assert {"python", "numpy", "symconv", "device"} <= set(env)
    assert list(res["transforms"]) == list(TRANSFORMS)
    assert list(res["variants"]) == variants
    for name, v in res["variants"].items():
        assert len(v["runs"]) == 2
        assert [r["seed"] for r in v["runs"]] == [0, 1]
        for r in v["runs"]:
            assert set(r) == RUN_KEYS and r["diverged"] is None
            assert r["params"] == v["params"] > 0
            assert set(r["accuracy"]) == set(TRANSFORMS)
            # accuracies are fractions of the 100 test images
            assert all(
                0 <= a <= 1 and abs(a * 100 - round(a * 100)) < 1e-9 for a in r["accuracy"].values()
            )
            assert len(r["history"]) == 1 and r["history"][0]["epoch"] == 1
            assert r["images_per_s"] > 0 and r["peak_memory_mb"] > 0
            assert r["history"][0]["test_acc"] == r["accuracy"]["clean"]
        # summary = mean and sample std over the runs, from the per-run numbers
        for t in TRANSFORMS:
            accs = [r["accuracy"][t] for r in v["runs"]]
            assert v["mean"]["accuracy"][t] == pytest.approx(statistics.mean(accs))
            assert v["std"]["accuracy"][t] == pytest.approx(statistics.stdev(accs))
        if name == "sym-inv":
            # exact invariance shows in the table: flipped test sets score the same
            for r in v["runs"]:
                assert r["accuracy"]["hflip"] == r["accuracy"]["clean"]
                assert r["accuracy"]["vflip"] == r["accuracy"]["clean"]
        # checkpoints: the finished state of every run
        for k in range(2):
            ckpt = torch.load(out / "checkpoints" / f"{name}-run{k}.pt", weights_only=True)
            assert ckpt["finished"] and ckpt["epoch"] == 1
            assert ckpt["result"]["accuracy"] == v["runs"][k]["accuracy"]
    if "sym" in res["variants"]:
        sym, plain = res["variants"]["sym"], res["variants"]["plain"]
        assert sym["params"] < plain["params"] and sym["converted"]
        assert res["variants"]["twist"]["params"] > plain["params"]

    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == variants
    for row in rows:
        v = res["variants"][row["variant"]]
        assert int(row["params"]) == v["params"] and int(row["runs"]) == 2
        for t in TRANSFORMS:
            assert float(row[f"acc_{t}"]) == pytest.approx(v["mean"]["accuracy"][t])
            assert float(row[f"acc_{t}_std"]) == pytest.approx(v["std"]["accuracy"][t])
        assert float(row["images_per_s"]) == pytest.approx(v["mean"]["images_per_s"])

    table = (out / "table.md").read_text()
    assert table.count("\n") == len(variants) + 2 and "`plain`" in table

    if "matplotlib" in sys.modules or _importable("matplotlib"):
        from PIL import Image

        assert res["plots"] == ["learning_curves.png", "robustness.png"]
        for png in res["plots"]:
            with Image.open(out / png) as im:
                assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    else:  # plotting is an optional extra: skipped with a note, never an error
        assert res["plots"] == [] and not list(out.glob("*.png"))
        assert "matplotlib is not installed" in printed
    assert not list(out.rglob("*.tmp"))  # atomic writes leave nothing behind


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def test_no_matplotlib_skips_plots_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert (
        _compare(
            "--epochs", "1", "--variants", "plain", "--limit", "60", "--out", str(tmp_path / "r")
        )
        == 0
    )
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert _load(tmp_path / "r")["plots"] == []
    assert not list((tmp_path / "r").glob("*.png"))


def _numbers(res: dict) -> dict:
    """Everything that must not depend on an interruption (not the timings)."""
    return {
        name: [
            (
                r["seed"],
                r["accuracy"],
                [(h["train_loss"], h["train_acc"], h["test_acc"], h["lr"]) for h in r["history"]],
            )
            for r in v["runs"]
        ]
        for name, v in res["variants"].items()
    }


def test_resume_reproduces_an_uninterrupted_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--epochs", "2", "--variants", "plain,sym-inv", "--augment", "--no-plots"]
    assert _compare(*args, "--out", str(tmp_path / "whole")) == 0
    whole = _load(tmp_path / "whole")

    part = tmp_path / "part"
    # plain finishes (2 epochs), sym-inv stops after its first epoch
    assert _compare(*args, "--out", str(part), "--max-epochs-this-run", "3") == 0
    assert "continue with --resume" in capsys.readouterr().out
    stopped = _load(part)
    assert stopped["status"] == "interrupted" and list(stopped["variants"]) == ["plain"]
    ckpt = torch.load(part / "checkpoints" / "sym-inv-run0.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and not ckpt["finished"]

    # without --resume the folder is protected
    assert _compare(*args, "--out", str(part)) == 2
    assert "already holds a compare run; pass --resume" in capsys.readouterr().err
    # a changed option is refused
    assert _compare(*args, "--out", str(part), "--resume", "--lr", "0.1") == 2
    err = capsys.readouterr().err
    assert "options differ" in err and "settings: was" in err and "'lr': 0.1" in err

    assert _compare(*args, "--out", str(part), "--resume") == 0
    printed = capsys.readouterr().out
    assert "plain run 1/1: finished earlier" in printed
    assert "sym-inv run 1/1: resuming after epoch 1/2" in printed
    resumed = _load(part)
    assert resumed["status"] == "complete"
    assert _numbers(resumed) == _numbers(whole)


def test_bad_arguments_fail_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["--data", str(tmp_path / "missing")], "neither a built-in dataset"),
        (["--variants", "plain,fancy"], "unknown variant 'fancy'"),
        (["--symmetry", "hq:50%"], "unknown symmetry key 'hq'"),
        (["--transforms", "hflip,shear"], "unknown transform 'shear'"),
        (["--resume", "--out", str(tmp_path / "none")], "holds no run to continue"),
    ]
    for args, message in cases:
        assert _compare(*args) == 2
        err = capsys.readouterr().err
        assert err.startswith("symconv compare: error:") and message in err
    (tmp_path / "ds" / "train" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "val" / "a").mkdir(parents=True)
    assert _compare("--data", str(tmp_path / "ds")) == 2
    assert "holds no images" in capsys.readouterr().err
    assert not (tmp_path / "ds" / "checkpoints").exists()
    with pytest.raises(SystemExit):
        main(["compare", "--epochs", "0"])


def _gloo_teardown_abort(stderr: str, out: Path) -> bool:
    """True when the run finished and wrote its results, and only the teardown aborted."""
    results = out / "results.json"
    return (
        "terminate called without an active exception" in stderr
        and results.exists()
        and json.loads(results.read_text()).get("status") == "complete"
    )


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ddp_two_gloo_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        "-m",
        "symconv",
        "compare",
        *QUICK,
        "--limit",
        "120",
        "--epochs",
        "1",
        "--variants",
        "plain",
        "--no-plots",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    if proc.returncode != 0 and _gloo_teardown_abort(proc.stderr, out):
        # torch 2.13's gloo occasionally aborts one process while the group is torn down,
        # after every result is written (seen about 1 run in 10 on a loaded 2-core machine;
        # a barrier before destroy_process_group does not prevent it). Not ours to fix here:
        # run once more, and fail on any other error.
        shutil.rmtree(out)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # only rank 0 prints the table
    assert proc.stdout.count("variant  params") == 1
    res = _load(out)
    assert res["status"] == "complete"
    assert set(res) == TOP_KEYS and set(res["variants"]["plain"]["runs"][0]) == RUN_KEYS
    assert res["environment"]["world_size"] == 2 and res["environment"]["backend"] == "gloo"
    run = res["variants"]["plain"]["runs"][0]
    assert set(run["accuracy"]) == set(TRANSFORMS)
    assert run["history"][0]["epoch"] == 1 and math.isfinite(run["history"][0]["train_loss"])
    # every training image seen once per epoch, split over the processes
    assert run["train_seconds"] > 0
    assert (out / "results.csv").is_file()
    assert torch.load(out / "checkpoints" / "plain-run0.pt", weights_only=True)["finished"]


@pytest.mark.parametrize("tqdm_installed", [True, False])
def test_progress_bar_or_plain_lines(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tqdm_installed: bool,
) -> None:
    from symconv.compare import CompareConfig, TrainSettings, run_compare

    if not tqdm_installed:
        monkeypatch.setitem(sys.modules, "tqdm", None)
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    elif not _importable("tqdm"):
        pytest.skip("tqdm is not installed")
    config = CompareConfig(
        variants=("plain",),
        limit=60,
        out=str(tmp_path / "r"),
        device="cpu",
        progress=True,
        plots=False,
        threads=1,
        settings=TrainSettings(width=2, epochs=2, batch_size=20),
    )
    res = run_compare(config)
    captured = capsys.readouterr()
    # one summary line per epoch either way; the bar (on stderr) only with tqdm
    assert captured.out.count("plain run 1/1 epoch") == 2
    assert ("plain run 1/1 epoch 1" in captured.err) == tqdm_installed
    assert res["variants"]["plain"]["runs"][0]["history"][-1]["epoch"] == 2


def test_default_out_and_resume_of_the_latest_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--epochs", "2", "--variants", "plain", "--limit", "40", "--no-plots"]
    assert _compare(*args, "--max-epochs-this-run", "1") == 0
    (run,) = (tmp_path / "symconv-runs").iterdir()
    assert run.name.startswith("mnist-cnn-")
    assert _load(run)["status"] == "interrupted"
    assert _compare(*args, "--resume") == 0
    assert f"output in {Path('symconv-runs') / run.name}" in capsys.readouterr().out
    assert _load(run)["status"] == "complete"
    assert len(list((tmp_path / "symconv-runs").iterdir())) == 1


def test_compare_on_an_image_folder(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 3)):
        for c, (lo, hi) in {"dark": (0, 100), "light": (150, 255)}.items():
            (tmp_path / "ds" / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(lo, hi, (12, 16, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(tmp_path / "ds" / split / c / f"{i}.png")
    out = tmp_path / "out"
    assert (
        _compare(
            "--data",
            str(tmp_path / "ds"),
            "--size",
            "8",
            "--epochs",
            "1",
            "--variants",
            "plain,sym-inv",
            "--no-plots",
            "--out",
            str(out),
        )
        == 0
    )
    res = _load(out)
    assert res["data"]["classes"] == ["dark", "light"]
    assert res["data"]["size"] == [8, 8] and res["data"]["channels"] == 3
    assert res["data"]["train"] == 12 and res["data"]["test"] == 6
    assert set(res["variants"]) == {"plain", "sym-inv"}
