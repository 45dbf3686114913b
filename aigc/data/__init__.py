"""Datasets and batching.

Every dataset is held in memory as uint8 tensors [N, C, H, W]; a `Batcher` slices random batches
from it (no per-item Python), so the data pipeline never limits a CPU run. Batches are dicts:
    {"image": float (B, C, H, W) in [0, 1], "label": int64 (B,)?, "caption": list[str]?}
A Batcher's position and random state are part of the trainer's checkpoint, so a resumed run
sees exactly the batches an uninterrupted run would have seen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from aigc.errors import AigcError, check_choice, did_you_mean

DATASETS = ("mnist", "shapes", "images")
VIDEO_DATASETS = ("moving-shapes", "moving-mnist")


@dataclass
class Split:
    images: torch.Tensor                               # uint8 (N, C, H, W)
    labels: torch.Tensor | None = None                 # int64 (N,)
    captions: Callable | None = None                   # (index, dropout, generator) -> list[str]
    attrs: dict = field(default_factory=dict)          # per-item attributes (shapes)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: torch.Tensor, binarize: bool = False, generator: torch.Generator | None = None,
              caption_dropout: float = 0.0) -> dict:
        x = self.images[index].float().div_(255)
        if binarize:
            x = torch.bernoulli(x, generator=generator)
        out = {"image": x}
        if self.labels is not None:
            out["label"] = self.labels[index]
        if self.captions is not None:
            out["caption"] = self.captions(index, caption_dropout, generator)
        return out


@dataclass
class Dataset:
    name: str
    train: Split
    eval: Split                                         # test split (mnist) or held-out part
    num_classes: int = 0
    class_names: list = field(default_factory=list)
    binarize: bool = False                              # dynamic binarisation of training batches
    caption_dropout: float = 0.0
    holdout: list = field(default_factory=list)         # shapes: (color, shape) pairs never trained on
    text_vocab: list = field(default_factory=list)      # captioned data: the caption words
    note: str = ""                                      # said once when loaded (e.g. skipped files)

    def describe(self) -> str:
        return f"{len(self.train)} training images {'x'.join(map(str, self.image_shape))}"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    def eval_batches(self, batch_size: int, limit: int | None = None):
        """The eval split in order (already binarised once with a fixed seed when binarize is on)."""
        n = len(self.eval) if limit is None else min(limit, len(self.eval))
        for i in range(0, n, batch_size):
            yield self.eval.batch(torch.arange(i, min(i + batch_size, n)))


class Batcher:
    """Endless random batches of a training split: a fresh permutation every epoch, derived from
    (seed, epoch) so the state to save is just (epoch, position, generator state)."""

    def __init__(self, data: Dataset, batch_size: int, seed: int):
        if batch_size < 1:
            raise AigcError(f"data.batch_size must be at least 1, got {batch_size}")
        self.data, self.batch_size, self.seed = data, min(batch_size, len(data.train)), seed
        self.epoch, self.pos = 0, 0
        self.generator = torch.Generator().manual_seed(seed + 1)   # binarisation and caption dropout
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.data.train), generator=g)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.pos + self.batch_size > len(self._perm):               # drop the ragged end of an epoch
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        index = self._perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.data.train.batch(index, self.data.binarize, self.generator, self.data.caption_dropout)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.generator.set_state(state["generator"])
        self._perm = self._permutation()


def _binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.bernoulli(images.float().div(255), generator=g) * 255).to(torch.uint8)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if not size or size == images.shape[-1]:
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    c = images.shape[1]
    if not channels or channels == c:
        return images
    if channels == 3 and c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round().to(torch.uint8)
    raise AigcError(f"data.channels must be 1 or 3, got {channels}")


def load_dataset(cfg, seed: int = 0) -> Dataset:
    """Build the dataset named in a DataConfig (a VideoDataset for the video datasets)."""
    check_choice("data.binarize", cfg.binarize, ("none", "dynamic"))
    if cfg.name == "mnist":
        from aigc.data.mnist import load_mnist

        m = load_mnist(cfg.dir, cfg.download)
        train, test = m["train_images"], m["test_images"]
        ds = Dataset("mnist", Split(train, m["train_labels"]), Split(test, m["test_labels"]),
                     num_classes=10, class_names=[str(i) for i in range(10)])
    elif cfg.name == "shapes":
        from aigc.data import shapes

        if cfg.num_train < 1 or cfg.num_eval < 1:
            raise AigcError("data.num_train and data.num_eval must be positive for shapes")
        tr_img, tr_attr = shapes.generate(cfg.num_train, seed=1234, holdout=cfg.holdout)
        ev_img, ev_attr = shapes.generate(cfg.num_eval, seed=4321)   # eval covers every pair, holdout too

        def cap(attrs):
            return lambda index, dropout=0.0, g=None: shapes.captions(attrs, index, dropout, g)

        ds = Dataset("shapes", Split(tr_img, tr_attr["shape"], cap(tr_attr), tr_attr),
                     Split(ev_img, ev_attr["shape"], cap(ev_attr), ev_attr),
                     num_classes=3, class_names=list(shapes.SHAPES), caption_dropout=cfg.caption_dropout,
                     holdout=list(cfg.holdout), text_vocab=list(shapes.VOCAB))
    elif cfg.name == "images":
        from aigc.data.images import load_folder

        size = cfg.image_size or 32
        images, labels, names, skipped = load_folder(cfg.dir, size, cfg.channels or 3)
        n_val = max(1, int(len(images) * cfg.val_fraction)) if len(images) > 1 else 0
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        tr, va = perm[n_val:], perm[:n_val] if n_val else perm
        lab = (lambda i: labels[i]) if labels is not None else (lambda i: None)
        ds = Dataset("images", Split(images[tr], lab(tr)), Split(images[va], lab(va)),
                     num_classes=len(names), class_names=names,
                     note=f"skipped {skipped} unreadable image file(s)" if skipped else "")
    elif cfg.name in VIDEO_DATASETS:
        from aigc.data.video import load_video_dataset

        return load_video_dataset(cfg)
    else:
        raise AigcError(f"unknown dataset '{cfg.name}'{did_you_mean(cfg.name, DATASETS + VIDEO_DATASETS)}")
    if cfg.name != "images":
        for split in (ds.train, ds.eval):
            split.images = _channels(_resize(split.images, cfg.image_size), cfg.channels)
    if cfg.binarize == "dynamic":
        ds.binarize = True
        ds.eval.images = _binarize_once(ds.eval.images, seed=2024)  # fixed: every run scores the same test set
    return ds
