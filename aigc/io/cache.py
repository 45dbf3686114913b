"""aigc's caches under AIGC_CACHE (default ~/.cache/aigc): what each kind holds, listing and clearing.

Every cache here is rebuilt on demand when missing, so clearing one costs only the time to rebuild it:
  tokens       the token stream of a text corpus (aigc/data/text.py), keyed by the text and the tokenizer
  classifiers  the feature classifier behind FID and class accuracy (aigc/metrics/classifier.py), keyed by the
               dataset's images; retraining the MNIST one takes minutes on 2 cores
Downloaded datasets (AIGC_DATA) are data, not cache: `aigc cache` does not touch them."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from aigc.errors import AigcError, did_you_mean

KINDS = {"tokens": "token streams of text corpora", "classifiers": "feature classifiers for FID / class accuracy"}
SOURCE = "source.json"          # what an entry was made from, written beside it when it is made


def cache_root() -> Path:
    return Path(os.environ.get("AIGC_CACHE", Path.home() / ".cache" / "aigc"))


def cache_dir(kind: str) -> Path:
    assert kind in KINDS, kind
    return cache_root() / kind


@dataclass
class Entry:
    kind: str
    name: str
    paths: list[Path]
    bytes: int
    used: float                  # the newest modification time (entries are touched when used)
    source: str


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def entries(kind: str | None = None) -> list[Entry]:
    """Every cache entry (of `kind`, or of all kinds). An entry is a folder (tokens) or the files that share a
    name before the extension (classifiers)."""
    found = []
    for k in ([kind] if kind else KINDS):
        folder = cache_dir(k)
        if not folder.is_dir():
            continue
        groups: dict[str, list[Path]] = {}
        for p in folder.iterdir():
            groups.setdefault(p.name if p.is_dir() else p.name.split(".")[0], []).append(p)
        for name, paths in sorted(groups.items()):
            found.append(Entry(k, name, paths, sum(_size(p) for p in paths), max(p.stat().st_mtime for p in paths),
                               _source(paths)))
    return found


def _source(paths: list[Path]) -> str:
    for p in paths:
        meta = p / SOURCE if p.is_dir() else p if p.suffix == ".json" else None
        if meta is not None and meta.is_file():
            try:
                info = json.loads(meta.read_text())
            except (OSError, ValueError):
                return "?"
            return ", ".join(f"{k}={v}" for k, v in info.items()
                             if k in ("dataset", "dir", "tokenizer", "images")) or "?"
    return "?"


def touch(path: Path) -> None:
    """Mark an entry as used now (its listing shows when it was last used)."""
    try:
        os.utime(path)
    except OSError:
        pass


def check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise AigcError(f"unknown cache '{kind}'{did_you_mean(kind, KINDS)}")


def human(size: int) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def listing(kind: str | None = None) -> str:
    check_kind(kind)
    rows = entries(kind)
    if not rows:
        return f"no caches under {cache_root()}"
    lines = [f"{'cache':12s} {'entry':34s} {'size':>9s}  {'last used':16s} made from"]
    for e in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.used))
        lines.append(f"{e.kind:12s} {e.name:34s} {human(e.bytes):>9s}  {used:16s} {e.source}")
    total = sum(e.bytes for e in rows)
    lines.append(f"{len(rows)} entries, {human(total)} under {cache_root()} (all are rebuilt when needed)")
    return "\n".join(lines)


def clear(kind: str | None = None, older_than_days: float | None = None) -> tuple[int, int]:
    """Remove entries (of `kind`; last used more than `older_than_days` ago); returns (entries, bytes) removed."""
    check_kind(kind)
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    n = size = 0
    for e in entries(kind):
        if cutoff is not None and e.used > cutoff:
            continue
        for p in e.paths:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        n, size = n + 1, size + e.bytes
    return n, size


def load_weights(kind: str, key: str) -> tuple[dict, dict] | None:
    """(state dict, metadata) of the network cached as KIND/KEY.safetensors + KEY.json, or None when absent."""
    from safetensors.torch import load_file

    folder = cache_dir(kind)
    path, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if not (path.is_file() and meta_path.is_file()):
        return None
    touch(meta_path)
    return load_file(str(path)), json.loads(meta_path.read_text())


def save_weights(kind: str, key: str, state: dict, meta: dict) -> None:
    """Cache a network's weights (safetensors, written atomically) and its metadata beside them."""
    from safetensors.torch import save_file

    folder = cache_dir(kind)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    (folder / f"{key}.json").write_text(json.dumps(meta))
