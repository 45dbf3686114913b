"""Run directories (DESIGN.md 'Run directory')."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from aigc.errors import AigcError

CONFIG, CHECKPOINT, METRICS, SAMPLES, LOSS_PNG, EVAL = (
    "config.toml", "checkpoint", "metrics.jsonl", "samples", "loss.png", "eval.json")


def plan_run_dir(out: str | None, family: str, dataset: str, overwrite: bool) -> Path:
    """The run folder a new run will use, checked (free, or an aigc run that --overwrite may replace, and
    writable) without touching anything: the old run is replaced only by `new_run_dir`, once the new run's
    config and data have passed their checks."""
    path = Path(out) if out else Path("runs") / f"{family}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists():
        if not path.is_dir():
            raise AigcError(f"--out {path} is a file")
        if any(path.iterdir()):
            if not overwrite:
                raise AigcError(f"--out {path} already exists and is not empty; pass --overwrite to replace it, "
                                f"or --resume {path} to continue it")
            if not (path / CONFIG).exists():
                raise AigcError(f"refusing to overwrite {path}: it is not an aigc run (no {CONFIG})")
    check_writable(path / CONFIG)
    return path


def new_run_dir(path: Path) -> Path:
    """Create the run folder `plan_run_dir` chose, replacing the old run there."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / SAMPLES).mkdir(exist_ok=True)
    return path


def check_writable(path: str | Path) -> Path:
    """A clear error, before any work, when `path` cannot be written: it is a folder, the nearest existing folder
    above it is a file, or that folder refuses a new file. Leaves nothing behind (missing folders are made by
    whoever writes later, so a run that fails its checks leaves no empty folder)."""
    import tempfile

    path = Path(path)
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if path.is_dir():
            raise AigcError(f"cannot write {path}: it is a folder")
        if not existing.is_dir():
            raise AigcError(f"cannot write {path}: {existing} is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".aigc-write-check-"):
            pass
    except OSError as e:
        raise AigcError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def check_run_dir(path: str | Path, need_checkpoint: bool = True) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise AigcError(f"run folder not found: {path}")
    if not (path / CONFIG).is_file():
        raise AigcError(f"{path} is not an aigc run (no {CONFIG})")
    if need_checkpoint:
        from aigc.io.checkpoint import recover

        recover(path / CHECKPOINT)
        if not (path / CHECKPOINT / "model.safetensors").is_file():
            raise AigcError(f"{path} has no checkpoint yet (it stopped before its first save)")
    return path


def read_metrics(path: Path) -> list[dict]:
    f = Path(path) / METRICS
    if not f.is_file():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:        # a line cut short by a crash
            continue
    return rows
