"""Checkpoints without pickle: weights in safetensors, the rest through torch.load(weights_only=True).

RUN/checkpoint/ is written into a temporary sibling folder first and then swapped in with renames,
so a crash at any moment leaves either the old or the new checkpoint whole, never a mix."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aigc.errors import AigcError

MODEL, EMA, STATE = "model.safetensors", "ema.safetensors", "trainer_state.pt"


def flat_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """{'encoder': m, ...} -> {'encoder.layer.weight': tensor, ...}, contiguous CPU copies."""
    return {f"{name}.{k}": v.detach().cpu().contiguous() for name, m in modules.items()
            for k, v in m.state_dict().items()}


def load_flat_state(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor], source: str) -> None:
    for name, m in modules.items():
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            m.load_state_dict(sub, strict=True)
        except RuntimeError as e:
            raise AigcError(f"{source} does not fit the model '{name}' built from the run's config:\n{e}") from None


def save_checkpoint(folder: Path, weights: dict, ema: dict | None, state: dict) -> None:
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / MODEL))
    if ema is not None:
        save_file(ema, str(tmp / EMA))
    torch.save(state, tmp / STATE)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def recover(folder: Path) -> None:
    """Finish a swap interrupted between its two renames (checkpoint.old exists, checkpoint does not)."""
    folder = Path(folder)
    old = folder.with_name(folder.name + ".old")
    if not folder.exists() and old.exists():
        old.rename(folder)


def load_weights(folder: Path, ema: bool = False) -> dict[str, torch.Tensor]:
    folder = Path(folder)
    recover(folder)
    path = folder / (EMA if ema else MODEL)
    if not path.is_file():
        raise AigcError(f"no checkpoint weights at {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise AigcError(f"checkpoint {path} is corrupt: {e}") from None


def load_state(folder: Path) -> dict:
    path = Path(folder) / STATE
    if not path.is_file():
        raise AigcError(f"no trainer state at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AigcError(f"trainer state {path} is corrupt: {e}") from None
