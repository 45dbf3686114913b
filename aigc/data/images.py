"""`images`: a folder of PNG/JPEG files (recursively), resized and centre-cropped, kept as uint8.

Images in sub-folders get the sub-folder's name as their class label (like ImageFolder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from aigc.data import Dataset, ImageConfig, Split, finish_images
from aigc.errors import AigcError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image -> uint8 [C, size, size]: shorter side resized to `size`, then centre crop."""
    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_folder(folder: str | Path, size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor | None, list[str],
                                                                       int]:
    """Return images uint8 [N,C,H,W], labels (or None), class names, number of files skipped."""
    if not folder:
        raise AigcError("dataset 'images' needs --data-dir FOLDER (a folder of PNG/JPEG files)")
    folder = Path(folder)
    if not folder.is_dir():
        raise AigcError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        raise AigcError(f"no image files ({', '.join(sorted(EXTENSIONS))}) found under {folder}")
    images, classes, skipped = [], [], 0
    for p in files:
        try:
            images.append(load_image(p, size, channels))
        except (UnidentifiedImageError, OSError, ValueError):
            skipped += 1
            continue
        classes.append(p.parent.relative_to(folder).as_posix())
    if not images:
        raise AigcError(f"none of the {len(files)} image files under {folder} could be read")
    names = sorted(set(classes))
    labels = torch.tensor([names.index(c) for c in classes]) if len(names) > 1 else None
    return torch.from_numpy(np.stack(images)), labels, names if labels is not None else [], skipped


# ---------------------------------------------------------------- the `images` dataset
@dataclass
class Config(ImageConfig):
    val_fraction: float = 0.1        # share of the folder kept for evaluation


def load(cfg: Config) -> Dataset:
    size = cfg.image_size or 32
    images, labels, names, skipped = load_folder(cfg.dir, size, cfg.channels or 3)
    n_val = max(1, int(len(images) * cfg.val_fraction)) if len(images) > 1 else 0
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    tr, va = perm[n_val:], perm[:n_val] if n_val else perm
    lab = (lambda i: labels[i]) if labels is not None else (lambda i: None)
    ds = Dataset("images", Split(images[tr], lab(tr)), Split(images[va], lab(va)),
                 num_classes=len(names), class_names=names,
                 note=f"skipped {skipped} unreadable image file(s)" if skipped else "")
    return finish_images(ds, cfg, resize=False)
