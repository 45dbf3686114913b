"""MNIST from the four original IDX gz files: read from a folder, or downloaded and md5-checked."""

from __future__ import annotations

import hashlib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aigc.data import Dataset, ImageConfig, Split, data_root, finish_images
from aigc.data.idx import read_idx
from aigc.errors import AigcError

FILES = {  # name -> md5 of the original distribution
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"]


def default_dir() -> Path:
    return data_root() / "mnist"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _download(folder: Path, missing: list[str]) -> None:
    """Fetch the missing files, md5-checked, each through a .part file; folders this made are removed again when
    nothing could be fetched (a failed download leaves nothing behind)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]       # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for name in missing:
            for mirror in MIRRORS:
                tmp = folder / (name + ".part")
                try:
                    with urllib.request.urlopen(mirror + name, timeout=15) as r, open(tmp, "wb") as f:
                        f.write(r.read())
                    if _md5(tmp) == FILES[name]:
                        tmp.replace(folder / name)
                        break
                except OSError:
                    continue
                finally:
                    tmp.unlink(missing_ok=True)
    finally:
        for p in made:
            try:
                p.rmdir()                                 # only when empty
            except OSError:
                break


def _missing_message(folder: Path, missing: list[str], tried_download: bool) -> str:
    lines = [f"MNIST files missing in {folder}: {', '.join(missing)}",
             "expected the four original IDX gz files:", *[f"  {n}" for n in FILES],
             "get them from any MNIST mirror (e.g. the 'mnist' folder of the ossci-datasets bucket) and pass "
             "--data-dir FOLDER" + (" (download failed: offline?)" if tried_download else "")]
    return "\n".join(lines)


def load_mnist(folder: str | Path = "", download: bool = True) -> dict[str, torch.Tensor]:
    """Return {train_images uint8 [60000,1,28,28], train_labels int64, test_images, test_labels}."""
    folder = Path(folder) if folder else default_dir()
    if folder.exists() and not folder.is_dir():
        raise AigcError(f"--data-dir {folder} is a file, not a folder")
    missing = [n for n in FILES if not (folder / n).is_file()]
    tried = False
    if missing and download:
        tried = True
        try:
            _download(folder, missing)
        except OSError:
            pass
        missing = [n for n in FILES if not (folder / n).is_file()]
    if missing:
        raise AigcError(_missing_message(folder, missing, tried))
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise AigcError(f"MNIST {split} files in {folder} do not match: images {images.shape}, labels "
                            f"{labels.shape}")
        if labels.size and labels.max() > 9:
            raise AigcError(f"MNIST {split} labels in {folder} are out of range (max {labels.max()})")
        out[f"{split}_images"] = torch.from_numpy(images.copy()).unsqueeze(1)
        out[f"{split}_labels"] = torch.from_numpy(labels.astype(np.int64))
    return out


# ---------------------------------------------------------------- the `mnist` dataset


@dataclass
class Config(ImageConfig):
    download: bool = True            # download when the files are missing and the machine is online


def load(cfg: Config) -> Dataset:
    m = load_mnist(cfg.dir, cfg.download)
    ds = Dataset("mnist", Split(m["train_images"], m["train_labels"]), Split(m["test_images"], m["test_labels"]),
                 num_classes=10, class_names=[str(i) for i in range(10)], reference_split="test")
    return finish_images(ds, cfg)
