"""The README's opening commands stay true (CI runs the README's test command), and every
Python snippet in the README and docs runs as pasted."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must open with a bash block of the two setup commands"
    return [ln for ln in block.group(1).splitlines() if ln and not ln.startswith("#")]


def test_readme_opens_with_two_commands():
    assert (ROOT / "README.md").read_text().splitlines()[2] == "```bash"
    commands = _readme_commands()
    assert len(commands) == 2
    assert all("pip install torch==2.13.0" in c for c in commands)


def test_ci_runs_the_readme_test_command():
    test_cmd = _readme_commands()[1]
    steps = [s.strip() for s in test_cmd.split("&&")]
    ci = (ROOT / ".ci" / "run").read_text()
    for step in steps:
        if step.startswith(("python3 -m venv", ". .venv")):
            continue  # CI makes its own venv the same way
        assert step in ci, f"{step!r} from the README's test command is missing in .ci/run"


def _python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line, code)`` of every ```python block in ``path``."""
    text = path.read_text()
    return [
        (text.count("\n", 0, m.start()) + 2, m.group(1))
        for m in re.finditer(r"```python\n(.*?)```", text, re.S)
    ]


# A block that trains for minutes carries this comment and is only compiled here.
SLOW_MARK = "# runs for minutes"

SNIPPETS = [
    pytest.param(path, line, code, id=f"{path.name}:{line}")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for line, code in _python_blocks(path)
]


@pytest.mark.parametrize(("path", "line", "code"), SNIPPETS)
def test_python_snippet_runs_as_pasted(path: Path, line: int, code: str, tmp_path, monkeypatch):
    """Every Python block of the README and docs runs on its own, in a fresh namespace (its
    own imports, no names from an earlier block), asserts included."""
    compiled = compile(code, f"{path.name}:{line}", "exec")
    if SLOW_MARK in code:
        pytest.skip(f"marked {SLOW_MARK!r}: compiled, not run")
    if "keras" in code:
        pytest.importorskip("keras")
    if "onnx" in code:
        pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    namespace: dict = {"__name__": "__snippet__"}
    exec(compiled, namespace)


def test_readme_symmetric_example_runs():
    """The first Python example in the README builds the layer its text describes."""
    line, first = _python_blocks(ROOT / "README.md")[0]
    assert "SymmetricConv2d" in first and "assert_close" in first
    namespace: dict = {}
    exec(compile(first, f"README.md:{line}", "exec"), namespace)
    assert namespace["conv"].weight.shape == (7, 3, 3, 3)


def test_quickstart_example_runs():
    """examples/quickstart.py runs and its flip checks come out exact."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    errors = [float(line.split()[-1]) for line in proc.stdout.splitlines() if " of 16 " in line]
    assert len(errors) == 3 and max(errors) < 1e-12
