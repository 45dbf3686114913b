"""loss.png from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path


def _log_if_wide(ax, values: list) -> None:
    """Log y-axis when every value is positive and they span more than 20x (early losses dwarf the rest)."""
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")


def plot_metrics(rows: list[dict], path: Path, title: str = "") -> Path | None:
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skip = {"kind", "step", "elapsed_s", "lr", "it_per_s", "epoch"}
    def plottable(row, k):            # counters such as num_test are not curves
        return k not in skip and not k.startswith("num_") and isinstance(row[k], (int, float))

    keys = [k for k in train[-1] if plottable(train[-1], k)]
    ekeys = [k for k in (evals[-1] if evals else {}) if plottable(evals[-1], k)]
    fig, axes = plt.subplots(1, 2 if ekeys else 1, figsize=(11 if ekeys else 6, 4), squeeze=False)
    ax = axes[0, 0]
    for k in keys:
        ax.plot([r["step"] for r in train if k in r], [r[k] for r in train if k in r], label=k)
    ax.set_xlabel("step"), ax.set_title("training"), ax.legend(), ax.grid(alpha=0.3)
    _log_if_wide(ax, [r[k] for r in train for k in keys if k in r])
    if ekeys:
        ax = axes[0, 1]
        for k in ekeys:
            ax.plot([r["step"] for r in evals if k in r], [r[k] for r in evals if k in r], "o-", label=k)
        ax.set_xlabel("step"), ax.set_title("evaluation"), ax.legend(), ax.grid(alpha=0.3)
        _log_if_wide(ax, [r[k] for r in evals for k in ekeys if k in r])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
