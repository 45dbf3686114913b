"""`images`: a folder of PNG/JPEG files (recursively), resized and centre-cropped, kept as uint8.

Images in sub-folders get the sub-folder's name as their class label (like ImageFolder). A `metadata.jsonl` beside
them (one {"file_name", "text"} per line, the Hugging Face ImageFolder convention) makes the folder captioned:
usable by text-to-image models and by the captioner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from aigc.data import Dataset, ImageConfig, Split, finish_images
from aigc.data.tokenizers import CaptionTokens
from aigc.errors import AigcError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file -> uint8 [C, size, size] (`fit_image`)."""
    with Image.open(path) as im:
        return fit_image(im, size, channels)


def fit_image(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image -> uint8 [C, size, size]: shorter side resized to `size`, then centre crop."""
    im = im.convert("L" if channels == 1 else "RGB")
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


METADATA = "metadata.jsonl"


@dataclass
class Folder:
    """What `load_folder` read: uint8 images [N, C, H, W], class labels (None without sub-folders), class names,
    captions (None without metadata.jsonl), and what was left out."""
    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str]
    captions: list[str] | None
    skipped: int                     # files that did not decode as images
    uncaptioned: int = 0             # image files that metadata.jsonl does not name

    def note(self) -> str:
        parts = [f"skipped {self.skipped} unreadable image file(s)"] if self.skipped else []
        if self.uncaptioned:
            parts.append(f"left out {self.uncaptioned} image file(s) that {METADATA} does not caption")
        return "; ".join(parts)


def read_metadata(folder: Path) -> dict[str, str]:
    """FOLDER/metadata.jsonl (the Hugging Face ImageFolder convention): one {"file_name": ..., "text": ...} per line,
    file names relative to the folder. Returns {relative posix path: caption}; errors name the line."""
    from aigc.data.text import read_jsonl

    path = folder / METADATA
    out = {}
    for n, row in read_jsonl(path, ("file_name", "text")):
        for key in ("file_name", "text"):
            if not row[key].strip():
                raise AigcError(f"{path}:{n}: \"{key}\" is empty")
        name = Path(row["file_name"]).as_posix()
        if not (folder / name).is_file():
            raise AigcError(f"{path}:{n}: image file not found: {folder / name}")
        out[name] = " ".join(row["text"].split())
    if not out:
        raise AigcError(f"{path} names no images")
    return out


def load_folder(folder: str | Path, size: int, channels: int) -> Folder:
    """Every image under `folder` (recursively), or with a metadata.jsonl the images it captions."""
    if not folder:
        raise AigcError("dataset 'images' needs --data-dir FOLDER (a folder of PNG/JPEG files)")
    folder = Path(folder)
    if not folder.is_dir():
        raise AigcError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    meta = read_metadata(folder) if (folder / METADATA).is_file() else None
    uncaptioned = 0
    if meta is not None:
        uncaptioned = sum(p.relative_to(folder).as_posix() not in meta for p in files)
        files = sorted(folder / name for name in meta)
    if not files:
        raise AigcError(f"no image files ({', '.join(sorted(EXTENSIONS))}) found under {folder}")
    images, classes, captions, skipped = [], [], [], 0
    for p in files:
        try:
            images.append(load_image(p, size, channels))
        except (UnidentifiedImageError, OSError, ValueError):
            skipped += 1
            continue
        classes.append(p.parent.relative_to(folder).as_posix())
        if meta is not None:
            captions.append(meta[p.relative_to(folder).as_posix()])
    if not images:
        raise AigcError(f"none of the {len(files)} image files under {folder} could be read")
    names = sorted(set(classes))
    labels = torch.tensor([names.index(c) for c in classes]) if len(names) > 1 else None
    return Folder(torch.from_numpy(np.stack(images)), labels, names if labels is not None else [],
                  captions if meta is not None else None, skipped, uncaptioned)


# ---------------------------------------------------------------- the `images` dataset
@dataclass
class Config(ImageConfig):
    val_fraction: float = 0.1        # share of the folder kept for evaluation
    caption_dropout: float = 0.1     # captioned folders: chance of training on the empty caption (guidance)
    caption_vocab: int = 512         # captioned folders: BPE vocabulary size of the caption encoder (at most)


def load(cfg: Config) -> Dataset:
    """The folder as a dataset: sub-folders are classes; a metadata.jsonl makes it captioned, with a caption
    vocabulary of byte-level BPE merges learned from the training captions (an open vocabulary: any prompt
    encodes; see aigc/data/tokenizers.CaptionTokens)."""
    size = cfg.image_size or 32
    f = load_folder(cfg.dir, size, cfg.channels or 3)
    n = len(f.images)
    n_val = max(1, int(n * cfg.val_fraction)) if n > 1 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    tr, va = perm[n_val:], perm[:n_val] if n_val else perm
    lab = (lambda i: f.labels[i]) if f.labels is not None else (lambda i: None)

    def cap(index):
        if f.captions is None:
            return None
        texts = [f.captions[i] for i in index.tolist()]
        return lambda i, dropout=0.0, g=None: caption_dropout([texts[j] for j in i.tolist()], dropout, g)

    ds = Dataset("images", Split(f.images[tr], lab(tr), cap(tr)), Split(f.images[va], lab(va), cap(va)),
                 num_classes=len(f.class_names), class_names=f.class_names, note=f.note(),
                 caption_dropout=cfg.caption_dropout if f.captions is not None else 0.0)
    if f.captions is not None:
        ds.text_tokens = "bpe"
        ds.text_vocab = CaptionTokens.train([f.captions[i] for i in tr.tolist()], cfg.caption_vocab).merges
    return finish_images(ds, cfg, resize=False)


def caption_dropout(texts: list[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Each caption replaced by the empty caption with probability p (for classifier-free guidance); a user's
    captions have no attributes to drop one by one, as the built-in shapes captions do."""
    if p <= 0:
        return texts
    drop = (torch.rand(len(texts), generator=generator) < p).tolist()
    return ["" if d else t for t, d in zip(texts, drop)]
