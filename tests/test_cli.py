"""The ``symconv`` command: fast help, and its error policy.

Policy (``symconv.cli``): a ``UsageError`` is one line and exit code 2; an ``OSError`` is
one line naming the path and the cause, exit code 1; Ctrl-C that no command handled is one
line and exit code 130; anything else is a bug in symconv and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import subprocess
import sys

import pytest

from symconv import cli
from symconv.cli import UsageError, describe_os_error, main

HELP_COMMANDS = [[], ["flow"], ["filters"], ["compare"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "symconv")
def test_help_imports_no_torch(command: list[str]) -> None:
    """``symconv [COMMAND] --help`` prints its help without importing torch (was ~3 s)."""
    code = (
        "import json, sys\n"
        "from symconv.cli import main\n"
        "try:\n"
        f"    main({[*command, '--help']!r})\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        "heavy = [m for m in ('torch', 'numpy', 'PIL', 'matplotlib') if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    *help_text, last = run.stdout.splitlines()
    result = json.loads(last)
    assert result == {"code": 0, "heavy": []}
    assert help_text[0].startswith(f"usage: symconv {' '.join(command)}".rstrip())


def test_python_m_symconv_help() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "symconv", "flow", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "--max-frames" in run.stdout and "--columns" in run.stdout


def _run_with(monkeypatch, func) -> int:  # noqa: ANN001
    """``symconv flow --list-presets`` with the flow command's function replaced."""
    from symconv.viz import cli as viz_cli

    monkeypatch.setattr(viz_cli, "run_flow", func)
    return main(["flow", "--list-presets"])


def test_usage_error_is_one_line_exit_2(monkeypatch, capsys) -> None:
    def func(args):  # noqa: ANN001, ANN202
        raise UsageError("--thing 3 is not allowed")

    assert _run_with(monkeypatch, func) == 2
    assert capsys.readouterr().err == "symconv flow: error: --thing 3 is not allowed\n"


def test_os_error_is_one_line_with_the_path_exit_1(monkeypatch, capsys) -> None:
    def func(args):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.png")

    assert _run_with(monkeypatch, func) == 1
    assert (
        capsys.readouterr().err == "symconv flow: error: /data/out.png: No space left on device\n"
    )


def test_a_reader_that_goes_away_is_no_error() -> None:
    """``symconv flow --list-presets | head -0``: stdout closes before the first line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "symconv", "flow", "--list-presets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the interpreter has even started
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_ctrl_c_before_a_command_can_save_is_one_line_exit_130(monkeypatch, capsys) -> None:
    """Ctrl-C while a command still imports torch (before it has anything to save)."""

    def func(args):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    assert _run_with(monkeypatch, func) == 130
    assert capsys.readouterr().err == "\nsymconv flow: interrupted\n"


@pytest.mark.parametrize("error", [TypeError, ValueError, KeyError, RuntimeError])
def test_other_exceptions_keep_their_traceback(monkeypatch, error: type[Exception]) -> None:
    """A bug must not be dressed up as a user mistake: the exception propagates."""

    def func(args):  # noqa: ANN001, ANN202
        raise error("internal")

    with pytest.raises(error, match="internal"):
        _run_with(monkeypatch, func)


def test_a_bug_exits_with_a_traceback_from_the_shell(tmp_path) -> None:
    code = (
        "import sys\n"
        "from symconv.viz import cli as viz_cli\n"
        "def boom(args):\n"
        "    raise TypeError('internal bug')\n"
        "viz_cli.run_flow = boom\n"
        "from symconv.cli import main\n"
        "sys.exit(main(['flow', '--list-presets']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in run.stderr
    assert run.stderr.rstrip().endswith("TypeError: internal bug")


def test_describe_os_error() -> None:
    assert describe_os_error(FileNotFoundError(errno.ENOENT, "No such file", "a.png")) == (
        "a.png: No such file"
    )
    assert describe_os_error(OSError(errno.EXDEV, "Cross-device link", "a", None, "b")) == (
        "a -> b: Cross-device link"
    )
    assert describe_os_error(OSError("disk on fire")) == "disk on fire"


def test_flow_usage_errors_are_usage_errors(tmp_path, capsys) -> None:
    """viz.cli turns its option checks into UsageError (main no longer catches ValueError)."""
    assert main(["flow", "--preset", "blur", "--steps", "-1"]) == 2
    assert capsys.readouterr().err == (
        "symconv flow: error: --steps -1 is not allowed; give 0 or more\n"
    )


def test_filters_usage_error(tmp_path, capsys) -> None:
    assert main(["filters", str(tmp_path / "none.pt"), "--max-rows", "0"]) == 2
    assert capsys.readouterr().err == (
        "symconv filters: error: --max-rows 0 is not allowed; give 1 or more\n"
    )


def test_no_command_prints_help(capsys) -> None:
    assert cli.main([]) == 2
    assert capsys.readouterr().out.startswith("usage: symconv")


def _subparser(name: str):  # noqa: ANN202
    parser = cli.build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_compare_cli_defaults_are_the_dataclass_defaults() -> None:
    """Every ``symconv compare`` option defaults to its CompareConfig / TrainSettings field,
    and the choices are the names the library knows: nothing is restated to drift."""
    import dataclasses

    from symconv.compare import config as cfg
    from symconv.compare.cli import config_from_args

    parser = cli.build_parser()
    assert config_from_args(parser.parse_args(["compare"])) == cfg.CompareConfig()
    fields = {f.name: f for f in dataclasses.fields(cfg.CompareConfig)}
    settings = {f.name for f in dataclasses.fields(cfg.TrainSettings)}
    fields |= {name: None for name in settings}
    compare = _subparser("compare")
    checked = set()
    for action in compare._actions:
        if action.dest not in fields or action.dest in ("variants", "transforms"):
            continue
        owner = cfg.TrainSettings if action.dest in settings else cfg.CompareConfig
        assert action.default == cfg.field_default(owner, action.dest), action.dest
        checked.add(action.dest)
    assert {"epochs", "batch_size", "lr", "model", "device", "runs", "seed"} <= checked
    choices = {a.dest: tuple(a.choices) for a in compare._actions if a.choices}
    assert choices == {
        "color": cfg.COLORS,
        "model": cfg.MODELS,
        "invariant_key": cfg.INVARIANT_KEYS,
        "device": cfg.DEVICES,
        "group_width": cfg.GROUP_WIDTHS,
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--variants", "plain,sym", "--group-width", "params"],
            "--group-width='params' shapes the p4/p4m variants only",
        ),
        (
            ["--variants", "plain", "--symmetry", "h:2"],
            "--symmetry='h:2' shapes the sym variant only",
        ),
        (
            ["--variants", "sym", "--invariant-to", "h"],
            "--invariant-to='h' shapes the sym-inv variant only",
        ),
    ],
)
def test_compare_options_for_unselected_variants_are_refused(argv, message, capsys) -> None:
    """A variant's option with none of its variants selected would be silently ignored."""
    from symconv.cli import main

    assert main(["compare", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "has none of them" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "inf"], "symconv compare: error: --lr=inf must be a positive number\n"),
        (["--label-smoothing", "1.5"], "error: --label-smoothing=1.5 must be in [0, 1)\n"),
        (["--weight-decay", "-1"], "error: --weight-decay=-1.0 must be >= 0\n"),
        (
            ["--transforms", " , "],
            "names no transform; allowed: 'all' or a comma list of clean, hflip, vflip, rot90, "
            "rot+15, rot-15, scale0.8, scale1.2 ('clean' alone: no robustness columns)\n",
        ),
    ],
)
def test_compare_option_checks_name_the_option_as_typed(argv, message, capsys) -> None:
    assert main(["compare", *argv]) == 2
    assert capsys.readouterr().err.endswith(message)


@pytest.mark.parametrize(("flag", "minimum"), [("--size", 4), ("--limit", 2)])
def test_compare_parser_bounds_are_the_data_loaders(flag, minimum, capsys) -> None:
    """The parser refuses what ``load_data`` would, with the same bound, before any import."""
    with pytest.raises(SystemExit):
        main(["compare", flag, str(minimum - 1)])
    assert f"argument {flag}: '{minimum - 1}' must be >= {minimum}" in capsys.readouterr().err
    parser = cli.build_parser()
    assert parser.parse_args(["compare", flag, str(minimum)]) is not None


def test_compare_options_reach_their_variants() -> None:
    from symconv.compare.cli import config_from_args

    parser = cli.build_parser()
    argv = ["compare", "--variants", "p4m,sym", "--group-width", "params", "--symmetry", "h:2"]
    config = config_from_args(parser.parse_args(argv))
    assert (config.settings.group_width, config.settings.symmetry) == ("params", "h:2")
    # The default value is no mistake, whatever the variants.
    argv = ["compare", "--variants", "plain", "--group-width", "channels"]
    assert config_from_args(parser.parse_args(argv)).variants == ("plain",)


def test_viz_cli_defaults_are_the_library_defaults() -> None:
    import inspect

    from symconv.viz import filters, flow

    flow_cli, filters_cli = _subparser("flow"), _subparser("filters")
    defaults = {a.dest: a.default for a in flow_cli._actions}
    assert defaults["padding"] == inspect.signature(flow.flow_frames).parameters["padding"].default
    assert {a.dest: a.choices for a in flow_cli._actions}["padding"] == flow.PADDING_MODES
    plot = inspect.signature(filters.plot_filters).parameters
    defaults = {a.dest: a.default for a in filters_cli._actions}
    assert (defaults["max_rows"], defaults["max_in"]) == (
        plot["max_rows"].default,
        plot["max_in"].default,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "--group-width", "foo"],
        ["compare", "--limit", "foo"],
        ["compare", "--no-such-option"],
        ["bogus"],
    ],
)
def test_argument_parser_errors_are_one_line_exit_2(argv, capsys) -> None:
    from symconv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("symconv") and "error:" in err


@pytest.mark.parametrize(
    ("argv", "prog", "extras"),
    [
        (["compare", "--no-such-option"], "symconv compare", "--no-such-option"),
        (["flow", "--preset", "blur", "--bogus", "x"], "symconv flow", "--bogus x"),
        (["filters", "ckpt.pt", "--bogus"], "symconv filters", "--bogus"),
        (["--bogus"], "symconv", "--bogus"),
    ],
)
def test_unknown_options_are_named_by_the_command_they_were_given_to(argv, prog, extras, capsys):
    """The subcommand's parser reports them, pointing at its own --help."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{prog}: error: unrecognized arguments: {extras} (see {prog} --help)"
