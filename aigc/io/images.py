"""Image and video writers: PNG grids, npz sample files (DESIGN.md 'Sample files'), GIFs."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C)."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def video_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float clips (N, C, T, H, W) in [0, 1] -> uint8 (N, T, H, W, C) (the npz `videos` layout)."""
    n, c, t, h, w = x.shape
    return to_uint8(x.transpose(1, 2).reshape(n * t, c, h, w)).reshape(n, t, h, w, c)


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (H', W', C) mosaic with `pad` px of grey between tiles."""
    n, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol_rows = math.ceil(n / nrow)
    out = np.full((ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 64, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return out


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_grid(path: Path, images: torch.Tensor | np.ndarray, nrow: int | None = None, scale: int = 2) -> Path:
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else images
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil(grid(arr, nrow, scale=scale)).save(path)
    return path


def save_npz(path: Path, images: torch.Tensor | np.ndarray, labels=None, prompts=None, key: str = "images") -> Path:
    """images: float (N, C, H, W) in [0, 1], or a uint8 array already in the file's layout (videos)."""
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else images
    out = {key: arr}
    if labels is not None:
        out["labels"] = np.asarray(labels, dtype=np.int64)
    if prompts is not None:
        out["prompts"] = np.asarray(prompts, dtype=np.str_)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    return path


def save_gif(path: Path, videos: np.ndarray, nrow: int | None = None, fps: int = 8, scale: int = 2) -> Path:
    """uint8 (N, T, H, W, C) -> an animated grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gif_bytes(videos, nrow, fps, scale))
    return path


def gif_bytes(videos: np.ndarray, nrow: int | None = None, fps: int = 8, scale: int = 2) -> bytes:
    """uint8 (N, T, H, W, C) -> the bytes of an animated GIF of their grid (one clip: N = 1)."""
    frames = [_pil(grid(videos[:, t], nrow, pad=0 if len(videos) == 1 else 2, scale=scale))
              for t in range(videos.shape[1])]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """uint8 (H, W, C) -> the bytes of a PNG."""
    if scale > 1:
        image = image.repeat(scale, 0).repeat(scale, 1)
    buf = io.BytesIO()
    _pil(image).save(buf, format="PNG")
    return buf.getvalue()
