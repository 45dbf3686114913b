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
    """{'encoder': m, ...} -> {'encoder.layer.weight': tensor, ...}, contiguous CPU tensors. A tensor
    that several keys share (weight tying) is stored once, under its first key."""
    out, seen = {}, set()
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            ptr = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
            if ptr in seen:
                continue
            seen.add(ptr)
            out[f"{name}.{k}"] = v.detach().cpu().contiguous()
    return out


def _aliases(m: torch.nn.Module) -> set[str]:
    """Keys of state_dict entries that share a tensor with an earlier key (tied weights)."""
    seen, alias = set(), set()
    for k, v in m.state_dict().items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if ptr in seen:
            alias.add(k)
        seen.add(ptr)
    return alias


def load_flat_state(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor], source: str) -> None:
    for name, m in modules.items():
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        aliases = _aliases(m)
        try:
            result = m.load_state_dict(sub, strict=False)
        except RuntimeError as e:
            raise AigcError(f"{source} does not fit the model '{name}' built from the run's config:\n{e}") from None
        missing = [k for k in result.missing_keys if k not in aliases]
        if missing or result.unexpected_keys:
            raise AigcError(f"{source} does not fit the model '{name}' built from the run's config: "
                            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")


def save_checkpoint(folder: Path, weights: dict, ema: dict | None, state: dict) -> None:
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / MODEL))
    if ema is not None:
        save_file(ema, str(tmp / EMA))
    torch.save(state, tmp / STATE)
    for f in (MODEL, EMA):                  # safetensors writes 0600; the run's other files follow the umask
        if (tmp / f).is_file():
            (tmp / f).chmod((tmp / STATE).stat().st_mode & 0o777)
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
    except Exception as e:       # torch's message advises weights_only=False, which would run code in the file
        raise AigcError(f"trainer state {path} is damaged or was not written by aigc ({type(e).__name__}); it is "
                        f"only ever read as plain tensors and numbers, so it cannot be used") from None


def load_modules(modules: dict[str, torch.nn.Module], folder: Path, ema: bool = True) -> bool:
    """Load a checkpoint's weights into `modules`: the EMA weights where they exist and `ema` is asked
    for (the rest from the live weights). Returns whether EMA weights were used."""
    folder = Path(folder)
    use_ema = ema and (folder / EMA).is_file()
    weights = load_weights(folder)
    if use_ema:
        weights = {**weights, **load_weights(folder, ema=True)}
    load_flat_state(modules, weights, str(folder))
    return use_ema
