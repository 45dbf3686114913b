"""Write a generation result (aigc/generation.py) to the sample files of DESIGN.md 'Sample files'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aigc.errors import AigcError
from aigc.io.audio import trim_padding, write_wav
from aigc.io.images import save_gif, save_grid, save_npz
from aigc.io.rundir import check_writable

SUFFIXES = {"text": (".txt", ".jsonl", "any other"), "images": (".png", ".npz"), "video": (".gif", ".npz"),
            "audio": (".wav", ".npz", ".png")}


def check_out(kind: str, out: str | Path | None) -> Path | None:
    """The output path for a result of `kind`, checked before any work is done."""
    if out is None:
        if kind == "text":
            return None
        raise AigcError(f"--out FILE{' or FILE'.join(SUFFIXES[kind])} is required for {kind} models")
    out = Path(out)
    if kind != "text" and out.suffix not in SUFFIXES[kind]:
        raise AigcError(f"--out must end in {' or '.join(SUFFIXES[kind])} for {kind}, got '{out.name}'")
    return check_writable(out)


def write_result(result, out: str | Path | None) -> Path | None:
    """Write `result` to `out` by its kind and the file's suffix; text with no `out` is not written."""
    out = check_out(result.kind, out)
    if out is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    if result.kind == "text":
        if out.suffix == ".jsonl":
            key, inputs = ("image", result.images) if result.images is not None else ("prompt", result.prompts)
            inputs = inputs or [None] * len(result.texts)
            lines = [json.dumps({key: p, "text": t}, ensure_ascii=False) for p, t in zip(inputs, result.texts)]
            out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            out.write_text("\n\n".join(result.texts) + "\n", encoding="utf-8")
        return out
    if result.kind == "images":
        if out.suffix == ".png":
            return save_grid(out, result.images, nrow=result.nrow)
        return save_npz(out, result.images, labels=result.labels, prompts=result.prompts)
    if result.kind == "video":
        if out.suffix == ".gif":
            return save_gif(out, result.videos)
        return save_npz(out, result.videos, prompts=result.prompts, key="videos")
    if out.suffix == ".npz":
        arrays = {"audio": result.audio.astype(np.float32), "sample_rate": np.int64(result.sample_rate)}
        if result.prompts is not None:
            arrays["prompts"] = np.asarray(result.prompts, dtype=np.str_)
        if result.labels is not None:
            arrays["labels"] = np.asarray(result.labels, np.int64)
        np.savez_compressed(out, **arrays)
        return out
    if out.suffix == ".png":
        if result.spectrograms is None:
            raise AigcError("this model's audio comes without spectrograms; write .wav or .npz")
        return save_grid(out, result.spectrograms[..., None], nrow=min(4, len(result.spectrograms)))
    return write_wavs(out, result.audio, result.sample_rate)


def wav_paths(out: Path, n: int) -> list[Path]:
    """FILE.wav for one sample, FILE-000.wav, FILE-001.wav, ... for several (DESIGN.md 'Sample files')."""
    return [out] if n == 1 else [out.with_name(f"{out.stem}-{i:03d}.wav") for i in range(n)]


def write_wavs(out: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write each sample as a 16-bit PCM WAV, without the zeros that padded it to the longest; returns the first
    file."""
    paths = wav_paths(out, len(audio))
    for path, a in zip(paths, audio):
        write_wav(check_writable(path), trim_padding(a), sample_rate)
    return paths[0]
