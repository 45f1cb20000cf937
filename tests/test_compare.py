"""``symconv compare`` end to end: output files, resume, errors, DDP."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
            # the epoch trained on exactly the 100 training images (2 full batches of 50)
            h = r["history"][0]
            assert h["images_per_s"] * h["seconds"] == pytest.approx(100, rel=1e-9)
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
    assert "options differ" in err and "settings.lr: was " in err and ", now 0.1" in err
    assert "{" not in err  # the differing entry, not two whole dicts

    assert _compare(*args, "--out", str(part), "--resume") == 0
    printed = capsys.readouterr().out
    assert "plain run 1/1: finished earlier" in printed
    assert "sym-inv run 1/1: resuming after epoch 1/2" in printed
    resumed = _load(part)
    assert resumed["status"] == "complete"
    assert _numbers(resumed) == _numbers(whole)
    # bit for bit: the final weights and batch-norm statistics of both runs
    for name in ("plain", "sym-inv"):
        a, b = (
            torch.load(folder / "checkpoints" / f"{name}-run0.pt", weights_only=True)["model"]
            for folder in (tmp_path / "whole", part)
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_resumed_run_reports_the_peak_memory_of_its_earlier_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The process that resumes may only evaluate (interrupted after the last epoch): the
    peak of the epochs before the interruption, kept in the history, still counts."""
    from symconv.compare import train

    args = ["--epochs", "2", "--variants", "plain", "--no-plots", "--out", str(tmp_path / "r")]
    assert _compare(*args, "--max-epochs-this-run", "1") == 0
    monkeypatch.setattr(train, "peak_memory", lambda device: (0.5, "stub"))
    assert _compare(*args, "--resume") == 0
    run = _load(tmp_path / "r")["variants"]["plain"]["runs"][0]
    first = run["history"][0]["peak_memory_mb"]
    assert first > 1 and run["history"][1]["peak_memory_mb"] == 0.5
    assert run["peak_memory_mb"] == first


def test_a_network_too_big_for_memory_is_one_line_before_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from symconv.compare import runner

    def too_big(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 720000000000 bytes. Error code 12"
        )

    monkeypatch.setattr(runner, "build_variant", too_big)
    assert _compare("--width", "100000", "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the plain network at --width 100000 does not fit in" in err
    assert "(can't allocate memory: you tried to allocate 720000000000 bytes" in err
    assert not (tmp_path / "r").exists()

    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("shape mismatch in a layer")  # a bug: its traceback stays

    monkeypatch.setattr(runner, "build_variant", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _compare("--out", str(tmp_path / "r2"))


@pytest.mark.parametrize(
    ("content", "cause"),
    [("{", r"\(Expecting property name"), ("[]", r"\(not a compare run's configuration\)")],
)
def test_a_damaged_run_config_is_one_line_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, cause: str
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(content)
    assert _compare("--out", str(run), "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(rf"--resume: .*config.json is damaged {cause}.*cannot be resumed", err)


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
    # every training image seen once per epoch, split over the processes: 120 images,
    # 60 a process in batches of 25 (the global 50 halved), the ragged 10 dropped
    assert run["train_seconds"] > 0
    assert (out / "results.csv").is_file()
    ckpt = torch.load(out / "checkpoints" / "plain-run0.pt", weights_only=True)
    assert ckpt["finished"] and ckpt["images_seen"] == 2 * 2 * 25
    assert len(ckpt["rng"]) == 2  # each process's RNG states, by rank


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
    else:
        pytest.importorskip("tqdm")
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
    # where the whole job stands: on every epoch line, and as a bar of its own with tqdm
    lines = [line for line in captured.out.splitlines() if "plain run 1/1 epoch" in line]
    for k, line in enumerate(lines, 1):
        assert re.search(
            rf"\[variant 1/1, job epoch {k}/2, \d+:\d\d elapsed, ETA \d+:\d\d\]$", line
        )
    assert ("job: plain (variant 1/1), run 1/1" in captured.err) == tqdm_installed
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


# -- output folder, signals, failures (issue 11) -------------------------------------------


def _start(out: Path, *args: str, **popen: Any) -> subprocess.Popen:
    """``symconv compare`` in a child process, with Python's own Ctrl-C handling (a shell
    may start background jobs with SIGINT ignored)."""
    cmd = [sys.executable, "-m", "symconv", "compare", *QUICK, *args, "--out", str(out)]
    return subprocess.Popen(
        cmd,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        start_new_session=True,
        text=True,
        **popen,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended before {path} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


LONG = ["--limit", "100", "--epochs", "40", "--variants", "plain", "--no-plots"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_leaves_an_interrupted_run_that_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signum: int
) -> None:
    out = tmp_path / "run"
    proc = _start(out, *LONG, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(out / "checkpoints" / "plain-run0.pt", proc)
    if signum == signal.SIGTERM:
        # Meanwhile a second run into the folder, fresh or resuming, is refused.
        for extra in ([], ["--resume"]):
            assert _compare(*LONG, *extra, "--out", str(out)) == 2
            err = capsys.readouterr().err
            assert err.startswith("symconv compare: error:") and len(err.splitlines()) == 1
            assert f"{out} is in use by another symconv compare (process {proc.pid})" in err
        assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert (out / "results.json").is_file(), stderr
    res = _load(out)
    assert res["status"] == "interrupted" and res["variants"] == {}
    assert proc.returncode == 128 + signum, stderr
    name = signal.Signals(signum).name
    assert f"interrupted ({name}); finished epochs are checkpointed" in stderr
    assert f"--resume --out {out}" in stderr and "Traceback" not in stderr
    ckpt = torch.load(out / "checkpoints" / "plain-run0.pt", weights_only=True)
    assert not ckpt["finished"] and 1 <= ckpt["epoch"] < 40

    assert _compare(*LONG, "--out", str(out), "--resume") == 0
    assert f"resuming after epoch {ckpt['epoch']}/40" in capsys.readouterr().out
    res = _load(out)
    assert res["status"] == "complete"
    assert [h["epoch"] for h in res["variants"]["plain"]["runs"][0]["history"]] == list(
        range(1, 41)
    )


@pytest.mark.timeout(300)
def test_a_closed_stdout_does_not_stop_training(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # every line leaves at once, as on a tty
    args = ["--limit", "60", "--epochs", "3", "--variants", "plain,sym", "--no-plots"]
    proc = _start(out, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdout.readline().startswith("symconv compare:")
    proc.stdout.close()  # `symconv compare | head -1`
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    res = _load(out)
    assert res["status"] == "complete" and list(res["variants"]) == ["plain", "sym"]


def test_default_folder_names_are_unique(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime

    from symconv.compare import outdir

    monkeypatch.chdir(tmp_path)
    # Two runs in the same second (the old names were per second).
    monkeypatch.setattr(outdir, "_now", lambda: datetime.datetime(2030, 1, 2, 3, 4, 5))
    args = ["--epochs", "1", "--variants", "plain", "--limit", "40", "--no-plots"]
    assert _compare(*args) == 0
    assert _compare(*args, "--max-epochs-this-run", "1", "--runs", "2") == 0
    runs = sorted(p.name for p in (tmp_path / "symconv-runs").iterdir())
    assert runs == ["mnist-cnn-20300102-030405", "mnist-cnn-20300102-030405-2"]
    assert _load(tmp_path / "symconv-runs" / runs[0])["status"] == "complete"
    # the latest is the second one, whatever the names sort like
    for n in range(3, 11):
        (tmp_path / "symconv-runs" / f"mnist-cnn-20300102-030405-{n}").mkdir()
    assert outdir.latest_run(tmp_path / "symconv-runs", "mnist-cnn-").name == runs[1]
    # parallel claims of one name never share a folder
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: outdir.new_run_folder(Path("par"), "x-"), range(16)))
    assert len(set(made)) == 16


def test_resume_checks_every_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--epochs", "1", "--variants", "plain,sym", "--limit", "40", "--no-plots"]
    run, other = tmp_path / "run", tmp_path / "other"
    assert _compare(*args, "--out", str(run), "--max-epochs-this-run", "1") == 0
    assert _compare(*args, "--out", str(other), "--seed", "7") == 0
    capsys.readouterr()
    ckpts = run / "checkpoints"

    def refused(message: str) -> None:
        assert _compare(*args, "--out", str(run), "--resume") == 2
        err = capsys.readouterr().err
        assert err.startswith("symconv compare: error:") and len(err.splitlines()) == 1
        assert message in err, err

    # another variant's checkpoint under this one's name
    shutil.copy(ckpts / "plain-run0.pt", ckpts / "sym-run0.pt")
    refused(f"{ckpts / 'sym-run0.pt'} holds 'plain' run 0 (seed 0), not 'sym' run 0 (seed 0)")
    # the same variant from a run with another seed (the options are otherwise the same)
    shutil.copy(other / "checkpoints" / "sym-run0.pt", ckpts / "sym-run0.pt")
    refused("holds 'sym' run 0 (seed 7), not 'sym' run 0 (seed 0)")
    # another run index
    shutil.copy(ckpts / "plain-run0.pt", ckpts / "plain-run1.pt")
    (ckpts / "sym-run0.pt").unlink()
    refused(f"{ckpts / 'plain-run1.pt'} holds 'plain' run 0 (seed 0), not 'plain' run 1 (seed 1)")
    # made with other options, renamed to fit
    (ckpts / "plain-run1.pt").unlink()
    state = torch.load(ckpts / "plain-run0.pt", weights_only=True)
    state["config"]["settings"]["lr"] = 0.5
    torch.save(state, ckpts / "plain-run0.pt")
    refused("was made with other options than this run: settings.lr: was 0.5, now 0.004")
    # a file that is no checkpoint
    (ckpts / "plain-run0.pt").write_text("junk")
    refused(f"cannot read checkpoint {ckpts / 'plain-run0.pt'}")
    assert not (ckpts / "sym-run0.pt").exists()  # nothing trained meanwhile


def test_resume_with_fewer_variants_and_runs_keeps_every_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from symconv.compare import runner

    drawn: list[dict] = []
    monkeypatch.setattr(runner, "plot_learning_curves", lambda v, path, title: True)
    monkeypatch.setattr(
        runner, "plot_robustness", lambda v, t, path, title: drawn.append(dict(v)) or True
    )
    out = tmp_path / "run"
    args = ["--epochs", "1", "--limit", "40", "--out", str(out)]
    assert _compare(*args, "--variants", "plain,sym", "--runs", "2") == 0
    full = _load(out)
    drawn.clear()
    assert _compare(*args, "--variants", "plain", "--runs", "1", "--resume") == 0
    assert "keeping 3 finished runs this invocation does not ask for" in capsys.readouterr().out
    res = _load(out)
    assert res["status"] == "complete" and res["seeds"] == [0, 1]
    assert _numbers(res) == _numbers(full)
    assert res["variants"]["sym"]["mean"] == full["variants"]["sym"]["mean"]
    with open(out / "results.csv", newline="") as fh:
        assert [r["variant"] for r in csv.DictReader(fh)] == ["plain", "sym"]
    table = (out / "table.md").read_text()
    assert "`plain`" in table and "`sym`" in table
    (plotted,) = drawn
    assert {v: len(plotted[v]["runs"]) for v in plotted} == {"plain": 2, "sym": 2}


def test_plots_never_disagree_with_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from symconv.compare import runner

    drawn: list[int] = []

    def fake_plot(*args: Any) -> bool:
        variants, path = args[0], Path(args[-2])
        drawn.append(len(variants["plain"]["runs"]))
        path.write_bytes(b"png")
        return True

    monkeypatch.setattr(runner, "plot_learning_curves", fake_plot)
    monkeypatch.setattr(runner, "plot_robustness", fake_plot)
    out = tmp_path / "run"
    args = ["--epochs", "2", "--limit", "40", "--out", str(out), "--variants", "plain"]
    assert _compare(*args) == 0
    assert _load(out)["plots"] == ["learning_curves.png", "robustness.png"] and drawn == [1, 1]
    # one more run, stopped before it ends: the plots of one run are gone
    assert _compare(*args, "--runs", "2", "--resume", "--max-epochs-this-run", "1") == 0
    res = _load(out)
    assert res["status"] == "interrupted" and res["plots"] == []
    assert not list(out.glob("*.png"))
    assert _compare(*args, "--runs", "2", "--resume") == 0
    assert _load(out)["plots"] == ["learning_curves.png", "robustness.png"]
    assert drawn == [1, 1, 2, 2]


def test_a_spec_that_converts_nothing_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _compare("--variants", "plain,sym", "--symmetry", "hv:3%", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("symconv compare: error: variant 'sym' converts no layer of the cnn")
    assert len(err.splitlines()) == 1
    assert not out.exists()  # nothing trained, nothing written


def test_a_run_whose_loss_is_not_finite_says_it_diverged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["--epochs", "3", "--limit", "60", "--variants", "plain", "--no-plots"]
    assert _compare(*args, "--lr", "1e30", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    epochs = [line for line in printed.splitlines() if line.startswith("plain run 1/1 epoch")]
    *trained, last = epochs  # the first step's loss is finite, so it may take an epoch
    assert len(epochs) < 3 and "nan" not in "".join(trained)
    assert f"epoch {len(epochs)}/3: loss nan - diverged; this run stops here" in last
    (row,) = (line for line in printed.splitlines() if line.split()[1:2] == ["1.7k"])
    assert row.split()[2:10] == ["diverged"] * 8
    assert (
        "runs that diverged (training loss not finite), left out of the accuracies: plain (1/1)"
        in printed
    )
    table = (out / "table.md").read_text()
    assert table.splitlines()[2].startswith("| `plain` | ") and table.count("diverged") == 8
    res = _load(out)
    run = res["variants"]["plain"]["runs"][0]
    assert run["diverged"] == len(epochs) and res["variants"]["plain"]["diverged"] == 1
    assert set(run["accuracy"].values()) == {None}  # not chance level reported as a score
    assert res["variants"]["plain"]["mean"]["accuracy"]["clean"] is None
    with open(out / "results.csv", newline="") as fh:
        (row,) = csv.DictReader(fh)
    assert row["diverged"] == "1" and row["acc_clean"] == ""
    # finished: a resume does not train it again
    assert _compare(*args, "--lr", "1e30", "--out", str(out), "--resume") == 0
    assert "finished earlier" in capsys.readouterr().out


def test_some_runs_diverged() -> None:
    from symconv.compare.report import format_table, summarize

    good = {"accuracy": {"clean": 0.5}, "history": [{"train_loss": 1.0}], "diverged": None}
    bad = {"accuracy": {"clean": math.nan}, "history": [{"train_loss": math.nan}], "diverged": 2}
    for run in (good, bad):
        run.update(images_per_s=10.0, train_seconds=1.0, peak_memory_mb=5.0)
    summary = summarize([good, bad, good])
    assert summary["diverged"] == 1
    assert summary["mean"]["accuracy"]["clean"] == 0.5 and summary["std"]["accuracy"]["clean"] == 0
    text = format_table({"plain": {"params": 10, "runs": [good, bad, good], **summary}}, ["clean"])
    assert text.splitlines()[2].split()[:5] == ["plain", "(1/3", "diverged)", "10", "50.0±0.0"]


def test_file_system_errors_are_one_line_with_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--epochs", "1", "--limit", "40", "--variants", "plain", "--no-plots"]
    (tmp_path / "file").write_text("")
    assert _compare(*args, "--out", str(tmp_path / "file" / "run")) == 1
    err = capsys.readouterr().err
    assert err == f"symconv compare: error: {tmp_path / 'file' / 'run'}: Not a directory\n"

    # a full disk while a checkpoint is written (the OS names no file)
    def full(obj: Any, f: Any) -> None:
        with open(f, "wb") if isinstance(f, str | os.PathLike) else contextlib.nullcontext(f) as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "full"
    assert _compare(*args, "--out", str(out)) == 1
    err = capsys.readouterr().err
    ckpt = out / "checkpoints" / "plain-run0.pt"
    assert err == f"symconv compare: error: {ckpt}: No space left on device\n"
    assert not ckpt.exists() and not list(out.rglob("*.tmp"))

    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        assert _compare(*args, "--out", str(tmp_path / "ro" / "run")) == 1
        assert "Permission denied" in capsys.readouterr().err


def test_atomic_write_syncs_before_renaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from symconv.compare import report

    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "results.json"
    report.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    tmp = calls[0][1]
    assert calls[:2] == [("fsync", tmp), ("replace", str(path))]
    assert Path(tmp).name == f".results.json.{os.getpid()}.tmp"
    assert calls[2:] == [("fsync", str(tmp_path))]  # the rename itself

    # a full disk at fsync (where delayed allocation reports it): the path, nothing left
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left on device") as info:
        report.write_json(path, {"a": 2})
    assert info.value.filename == str(path) and info.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == {"a": 1} and len(list(tmp_path.iterdir())) == 1


def test_group_variants_are_exactly_invariant(tmp_path: Path) -> None:
    """p4 scores the same on quarter-turned digits as on the originals; p4m also on
    flipped ones (exact invariance shows in the table); both cost a plain network's
    parameters / |G| with --group-width channels."""
    out = tmp_path / "run"
    args = ["--epochs", "1", "--limit", "100", "--variants", "plain,p4,p4m"]
    assert _compare(*args, "--transforms", "hflip,vflip,rot90", "--out", str(out)) == 0
    res = _load(out)
    assert res["config"]["settings"]["group_width"] == "channels"
    variants = res["variants"]
    for name, same in (("p4", ["rot90"]), ("p4m", ["rot90", "hflip", "vflip"])):
        (run,) = variants[name]["runs"]
        assert all(run["accuracy"][t] == run["accuracy"]["clean"] for t in same), run["accuracy"]
        assert "group=" in run["description"] and run["converted"]
    assert variants["p4m"]["params"] < variants["p4"]["params"] < variants["plain"]["params"]
