"""Results of ``symconv compare``: summary statistics, the terminal table, files, plots.

Files are written atomically (a temporary file in the same folder, then ``os.replace``),
so an interrupted run never leaves a half-written ``results.json``. Plots need
matplotlib; without it they are skipped with a note.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from symconv.checkpoint import atomic_write

__all__ = [
    "format_table",
    "plot_learning_curves",
    "plot_robustness",
    "steady_images_per_s",
    "summarize",
    "write_csv",
    "write_json",
]

#: Per-run numbers that get a mean and a standard deviation over the runs.
SCALAR_METRICS = ("images_per_s", "train_seconds", "peak_memory_mb")


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std of the finite ``values`` (NaN and None when there are none)."""
    clean = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return math.nan, None
    mean = sum(clean) / len(clean)
    if len(clean) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in clean) / (len(clean) - 1)  # sample std over seeds
    return mean, math.sqrt(var)


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (``None`` for one run) over ``runs``.

    Accuracies and the final loss are over the runs that did not diverge (NaN when all
    did); ``diverged`` counts the others.
    """
    if not runs:
        raise ValueError("summarize needs at least one run")
    good = [r for r in runs if not r.get("diverged")]
    mean: dict[str, Any] = {"accuracy": {}}
    std: dict[str, Any] = {"accuracy": {}}
    for t in runs[0]["accuracy"]:
        mean["accuracy"][t], std["accuracy"][t] = _mean_std([r["accuracy"][t] for r in good])
    for key in SCALAR_METRICS:
        mean[key], std[key] = _mean_std([r[key] for r in runs])
    mean["final_train_loss"], std["final_train_loss"] = _mean_std(
        [r["history"][-1]["train_loss"] for r in good]
    )
    return {"mean": mean, "std": std, "diverged": len(runs) - len(good)}


def steady_images_per_s(history: list[dict[str, Any]]) -> float:
    """Training throughput of a run: the median of its epochs' images/s after the first.

    The first epoch pays one-off costs (cuDNN autotuning, oneDNN primitive creation, the
    allocator's first growth) that say nothing about the layer's speed; it is used only
    when it is the only epoch.
    """
    rates = [r["images_per_s"] for r in history]
    if not rates:
        return float("nan")
    return statistics.median(rates[1:] or rates)


# -- terminal ----------------------------------------------------------------------------


def _params(n: int) -> str:
    if n >= 10**6:
        return f"{n / 1e6:.2f}M"
    if n >= 10**3:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _pct(mean: float, std: float | None) -> str:
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f}±{100 * std:.1f}"


def _table_rows(
    variants: Mapping[str, Mapping[str, Any]],
    transforms: Sequence[str],
    name: Callable[[str], str] = str,
) -> list[list[str]]:
    """The header and one row of cells per variant, accuracies in percent.

    A variant whose runs all diverged shows ``diverged`` for every accuracy; one where
    some did says how many beside its name (its accuracies are over the others).
    """
    rows = [["variant", "params", *transforms, "img/s", "peak MB"]]
    for variant, v in variants.items():
        m, s = v["mean"], v["std"]
        diverged, n = v.get("diverged", 0), len(v["runs"])
        label = name(variant) + (f" ({diverged}/{n} diverged)" if 0 < diverged < n else "")
        accuracies = (
            ["diverged"] * len(transforms)
            if diverged == n
            else [_pct(m["accuracy"][t], s["accuracy"][t]) for t in transforms]
        )
        rows.append(
            [
                label,
                _params(v["params"]),
                *accuracies,
                f"{m['images_per_s']:.0f}",
                f"{m['peak_memory_mb']:.0f}",
            ]
        )
    return rows


def format_table(variants: Mapping[str, Mapping[str, Any]], transforms: Sequence[str]) -> str:
    """The comparison as aligned text: one row per variant, accuracies in percent."""
    rows = _table_rows(variants, transforms)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        cells = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(variants: Mapping[str, Mapping[str, Any]], transforms: Sequence[str]) -> str:
    """The same table in Markdown (written to ``table.md`` for READMEs and notes)."""
    header, *rows = _table_rows(variants, transforms, name=lambda v: f"`{v}`")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


# -- files -------------------------------------------------------------------------------


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n"
    write_text(path, text)


def write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))


def csv_rows(
    variants: Mapping[str, Mapping[str, Any]], transforms: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per variant: means, and ``_std`` columns (empty for a single run)."""
    rows = []
    for name, v in variants.items():
        m, s = v["mean"], v["std"]
        row: dict[str, Any] = {
            "variant": name,
            "params": v["params"],
            "runs": len(v["runs"]),
            "diverged": v.get("diverged", 0),
        }
        for t in transforms:
            row[f"acc_{t}"] = m["accuracy"][t] if math.isfinite(m["accuracy"][t]) else None
            row[f"acc_{t}_std"] = s["accuracy"][t]
        for key in (*SCALAR_METRICS, "final_train_loss"):
            row[key] = m[key] if math.isfinite(m[key]) else None
            row[f"{key}_std"] = s[key]
        rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


# -- plots -------------------------------------------------------------------------------


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:  # type: ignore[no-untyped-def]
    def write(fh: BinaryIO) -> None:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")

    atomic_write(path, write)


def plot_learning_curves(variants: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> bool:
    """Training loss and clean test accuracy per epoch (mean over runs).

    Returns False (and draws nothing) when matplotlib is not installed.
    """
    plt = _pyplot()
    if plt is None:
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, v in variants.items():
        histories = [r["history"] for r in v["runs"]]
        n = min(len(h) for h in histories)
        epochs = list(range(1, n + 1))
        loss = [sum(h[e]["train_loss"] for h in histories) / len(histories) for e in range(n)]
        acc = [100 * sum(h[e]["test_acc"] for h in histories) / len(histories) for e in range(n)]
        ax_loss.plot(epochs, loss, marker="o", label=name)
        ax_acc.plot(epochs, acc, marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss (label-smoothed)", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="clean test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)
    return True


def plot_robustness(
    variants: Mapping[str, Mapping[str, Any]], transforms: Sequence[str], path: Path, title: str
) -> bool:
    """Grouped bars: accuracy per transformation and variant, with std error bars."""
    plt = _pyplot()
    if plt is None:
        return False
    names = list(variants)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(transforms) + 2), 4))
    for i, name in enumerate(names):
        m, s = variants[name]["mean"]["accuracy"], variants[name]["std"]["accuracy"]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(transforms))]
        errs = None if s[transforms[0]] is None else [100 * s[t] for t in transforms]
        ax.bar(xs, [100 * m[t] for t in transforms], width, yerr=errs, capsize=2, label=name)
    ax.set_xticks(range(len(transforms)), transforms)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100))
    ax.set_title(title, pad=28)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(ncols=len(names), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    _save(fig, path)
    plt.close(fig)
    return True
