"""Sample files scored against a dataset: `aigc eval --samples FILE.npz --data DATASET`, for samples
made by any tool (the dataset says how: `Dataset.score`); and the loss a trained GPT assigns to texts."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from aigc.errors import AigcError


def load_videos_npz(path: Path) -> dict:
    """Validate a DESIGN.md video sample file: videos uint8 [N,T,H,W,C], prompts str [N]?"""
    arrays = _read_npz(path)
    out = {"videos": _sample_array(path, arrays, "videos", "N,T,H,W,C", " and optional prompts [N]")}
    if "prompts" in arrays:
        out["prompts"] = _prompts(path, arrays["prompts"], len(out["videos"]))
    return out


def _sample_array(path, arrays: dict, key: str, layout: str, extras: str) -> torch.Tensor:
    """arrays[key] checked as uint8 [layout] with C = 1 or 3 last, returned channels-first (N, C, ...)."""
    if key not in arrays:
        raise AigcError(f"{path} has no '{key}' array (keys: {', '.join(arrays) or 'none'}); "
                        f"expected {key} uint8 [{layout}]{extras}")
    a = arrays[key]
    ndim = layout.count(",") + 1
    if a.dtype != np.uint8 or a.ndim != ndim or a.shape[-1] not in (1, 3):
        raise AigcError(f"{path}: '{key}' must be uint8 [{layout}] with C = 1 or 3, got {a.dtype} {list(a.shape)}")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))


def _read_npz(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AigcError(f"sample file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        why = "it holds Python objects, which aigc never loads" if "allow_pickle" in str(e) else str(e)
        raise AigcError(f"{path} is not a readable npz file: {why}") from None


def _prompts(path, pr: np.ndarray, n: int) -> list[str]:
    if pr.ndim != 1 or len(pr) != n or pr.dtype.kind != "U":
        raise AigcError(f"{path}: 'prompts' must be unicode strings [N] matching the {n} samples")
    return [str(p) for p in pr]


def load_samples_npz(path: Path) -> dict:
    """Validate a DESIGN.md image sample file: images uint8 [N,H,W,C], labels int [N]?, prompts str [N]?"""
    arrays = _read_npz(path)
    im = _sample_array(path, arrays, "images", "N,H,W,C", ", optional labels [N] and prompts [N]")
    out = {"images": im}
    if "labels" in arrays:
        lab = arrays["labels"]
        if lab.ndim != 1 or len(lab) != len(im) or not np.issubdtype(lab.dtype, np.integer):
            raise AigcError(f"{path}: 'labels' must be integers [N] matching the {len(im)} images")
        out["labels"] = torch.from_numpy(lab.astype(np.int64))
    if "prompts" in arrays:
        out["prompts"] = _prompts(path, arrays["prompts"], len(im))
    return out


def load_audio_npz(path: Path):
    """Validate a DESIGN.md audio sample file: audio float32 [N,S] in [-1, 1], sample_rate, labels [N]?, prompts
    [N]? -> an Audio result."""
    from aigc.generation import Audio

    arrays = _read_npz(path)
    if "audio" not in arrays or "sample_rate" not in arrays:
        raise AigcError(f"{path} needs 'audio' float32 [N,S] and 'sample_rate' (keys: {', '.join(arrays) or 'none'})")
    a = arrays["audio"]
    if a.ndim != 2 or a.dtype.kind != "f":
        raise AigcError(f"{path}: 'audio' must be float [N,S] in [-1, 1], got {a.dtype} {list(a.shape)}")
    labels = arrays.get("labels")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(a) or labels.dtype.kind not in "iu"):
        raise AigcError(f"{path}: 'labels' must be integers [N] matching the {len(a)} clips")
    prompts = _prompts(path, arrays["prompts"], len(a)) if "prompts" in arrays else None
    return Audio(np.clip(a.astype(np.float32), -1, 1), int(arrays["sample_rate"]), prompts,
                 None if labels is None else labels.astype(np.int64))


def eval_samples_file(path: Path, dataset: str, data_dir: str | None = None) -> dict:
    """Validate the sample file (before any data is loaded), then score it against `dataset`."""
    from aigc.config import data_config
    from aigc.data import entry, load_dataset

    kind = entry(dataset).kind
    if kind in ("audio", "speech"):
        result = load_audio_npz(path)
        data = load_dataset(data_config(dataset, dir=data_dir or ""))
        return {"samples": str(path), "dataset": dataset, **data.score_result(result)}
    if kind not in ("images", "video"):
        raise AigcError(f"--samples scores images, clips or audio; '{dataset}' is a {kind} dataset")
    video = kind == "video"
    s = load_videos_npz(path) if video else load_samples_npz(path)
    data = load_dataset(data_config(dataset, dir=data_dir or ""))
    result = data.score(s["videos"] if video else s["images"], s.get("labels"), s.get("prompts"))
    return {"samples": str(path), "dataset": dataset, **result}


def gpt_text_nll(recipe, texts: list[str], batch: int = 256) -> dict:
    """Mean loss (nats per predicted character) that a trained GPT run assigns to each text on its own
    (every character after the first, given the ones before it in the same text). Texts with characters
    the GPT's tokenizer does not know are skipped and counted."""
    model, tok = recipe.model, recipe.tokenizer
    rows, skipped = [], 0
    for t in texts:
        try:
            ids = tok.encode(t).tolist()
        except (AigcError, KeyError, ValueError):
            skipped += 1
            continue
        if len(ids) >= 2:
            rows.append(ids[-(model.cfg.block_size + 1):])
    total, count = 0.0, 0
    dev = recipe.device_of()
    with torch.no_grad():
        for length in sorted({len(r) for r in rows}):          # equal lengths batch together
            same = [r for r in rows if len(r) == length]
            for i in range(0, len(same), batch):
                out = model.loss(torch.tensor(same[i:i + batch], device=dev))
                total += out["sum"].item()
                count += int(out["count"].item())
    return {"gpt_nll": round(total / max(count, 1), 4), "gpt_scored_texts": len(rows), "gpt_skipped_texts": skipped}
