"""Datasets and batching; the registry of every dataset.

Adding a dataset = a module under aigc/data/ with its config (a subclass of config.DataConfig), a
`load(cfg) -> Dataset` and, for captioned data, `random_prompts(n, generator)`, plus one line in DATASETS.
A dataset owns what is specific to it: its options, the prompts or labels evaluation uses (its eval split),
its reference split and how generated samples are scored against it (`Dataset.score`).

Image datasets are held in memory as uint8 tensors [N, C, H, W]; a `Batcher` slices random batches
from them (no per-item Python), so the data pipeline never limits a CPU run. Batches are dicts:
    {"image": float (B, C, H, W) in [0, 1], "label": int64 (B,)?, "caption": list[str]?}
Clips (video datasets) are (N, C, T, H, W) under the key "video". A Batcher's position and random state
are part of the trainer's checkpoint, so a resumed run sees exactly the batches an uninterrupted run would."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from aigc.config import DataConfig
from aigc.errors import AigcError, check_choice, did_you_mean


@dataclass(frozen=True)
class Entry:
    kind: str                            # images | audio | video | text | speech: which families can train on it
    module: str                          # aigc.data.X with Config (or a named config class) and load(cfg)
    config: str = "Config"
    prompts: bool = False                # the module has random_prompts(n, generator): captioned data


DATASETS = {
    "mnist": Entry("images", "aigc.data.mnist"),
    "shapes": Entry("images", "aigc.data.shapes", prompts=True),
    "images": Entry("images", "aigc.data.images"),
    "moving-shapes": Entry("video", "aigc.data.video", "MovingShapesConfig", prompts=True),
    "moving-mnist": Entry("video", "aigc.data.video", "MovingMnistConfig"),
    "text": Entry("text", "aigc.data.text"),
    "code": Entry("text", "aigc.data.text"),
    "sft": Entry("text", "aigc.data.text"),
    "preferences": Entry("text", "aigc.data.preferences"),
    "spoken-digits": Entry("audio", "aigc.data.speech", "SpokenDigitsConfig"),
    "speech": Entry("speech", "aigc.data.speech", "SpeechConfig"),
}


def data_root() -> Path:
    """Where data that aigc downloads or makes is kept: AIGC_DATA, default ~/.cache/aigc."""
    return Path(os.environ.get("AIGC_DATA", Path.home() / ".cache" / "aigc"))


def eval_batches(split, batch_size: int, limit: int | None = None):
    """Batches of a split's first `limit` items (all when None), in order."""
    n = len(split) if limit is None else min(limit, len(split))
    for i in range(0, n, batch_size):
        yield split.batch(torch.arange(i, min(i + batch_size, n)))


def entry(name: str) -> Entry:
    if name not in DATASETS:
        raise AigcError(f"unknown dataset '{name}'{did_you_mean(name, DATASETS)}")
    return DATASETS[name]


def names_of(kind: str) -> list[str]:
    return [n for n, e in DATASETS.items() if e.kind == kind]


def config_class(name: str) -> type:
    e = entry(name)
    return getattr(importlib.import_module(e.module), e.config)


def check_kind(name: str, kind: str | tuple[str, ...], family: str) -> None:
    """A clear error when `family` (which trains on `kind` data, or one of several kinds) is given another kind."""
    kinds = (kind,) if isinstance(kind, str) else kind
    if entry(name).kind not in kinds:
        hint = {"video": " (train video-gan or video-diffusion on video data)",
                "text": " (train gpt or text-gan on text data)",
                "speech": " (train tts on speech)"}.get(entry(name).kind, "")
        names = ", ".join(n for k in kinds for n in names_of(k))
        raise AigcError(f"the {family} family trains on {' or '.join(kinds)} ({names}), not '{name}'{hint}")


def random_prompts(name: str, n: int, generator: torch.Generator | None = None) -> list[str]:
    """Captions of n random examples of a captioned dataset (without loading it)."""
    if not entry(name).prompts:
        raise AigcError(f"dataset '{name}' has no captions")
    return importlib.import_module(entry(name).module).random_prompts(n, generator)


def to_audio(name: str, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Samples of an audio dataset's image form (log-mel images, float (N, C, H, W) in [0, 1]) -> (audio (N, S)
    in [-1, 1], sample rate), as the dataset's module inverts them."""
    module = importlib.import_module(entry(name).module)
    return module.to_audio(x), module.SAMPLE_RATE


@dataclass
class ImageConfig(DataConfig):
    """Options of every image dataset."""
    image_size: int = 0              # 0 = the dataset's own size (28 mnist, 32 shapes)
    channels: int = 0                # 0 = the dataset's own (images: 3)
    binarize: str = "none"           # none | dynamic (resampled every batch; eval split binarised once)


@dataclass
class Split:
    images: torch.Tensor                               # uint8 (N, C, H, W) images or (N, C, T, H, W) clips
    labels: torch.Tensor | None = None                 # int64 (N,) (moving-mnist: (N, digits))
    captions: Callable | None = None                   # (index, dropout, generator) -> list[str]
    attrs: dict = field(default_factory=dict)          # per-item attributes (shapes, moving-shapes)
    key: str = "image"                                 # the batch entry: "image" or "video"

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: torch.Tensor, binarize: bool = False, generator: torch.Generator | None = None,
              caption_dropout: float = 0.0) -> dict:
        x = self.images[index].float().div_(255)
        if binarize:
            x = torch.bernoulli(x, generator=generator)
        out = {self.key: x}
        if self.labels is not None:
            out["label"] = self.labels[index]
        if self.captions is not None:
            out["caption"] = self.captions(index, caption_dropout, generator)
        return out


@dataclass
class Dataset:
    """An image dataset in memory. Subclasses (shapes, the video datasets) say how samples are scored."""
    name: str
    train: Split | None                                 # None: training data made per batch (video)
    eval: Split                                         # test split (mnist) or held-out part
    num_classes: int = 0
    class_names: list = field(default_factory=list)
    binarize: bool = False                              # dynamic binarisation of training batches
    caption_dropout: float = 0.0
    holdout: list = field(default_factory=list)         # (color, shape) pairs never trained on
    text_vocab: list = field(default_factory=list)      # captioned data: the caption words (or BPE merges)
    text_tokens: str = "words"                          # how text_vocab reads: words | bpe (tokenizers.CaptionTokens)
    note: str = ""                                      # said once when loaded (e.g. skipped files)
    reference_split: str = "eval"                       # what the sample metrics compare against
    reference: torch.Tensor | None = None               # those images (default: eval.images, before binarising)
    class_scored = True                                 # samples' labels are the classes the classifier reads

    def describe(self) -> str:
        return f"{len(self.train)} training images {'x'.join(map(str, self.image_shape))}"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    @property
    def reference_images(self) -> torch.Tensor:
        """What generated samples are scored against: `reference`, else the eval split's images."""
        return self.reference if self.reference is not None else self.eval.images

    def eval_batches(self, batch_size: int, limit: int | None = None):
        """The eval split in order (already binarised once with a fixed seed when binarize is on)."""
        return eval_batches(self.eval, batch_size, limit)

    # ---------------------------------------------------------------- scoring generated samples
    def feature_classes(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(training labels, reference labels, number of classes) the feature classifier learns."""
        if self.train.labels is None or self.num_classes < 2:
            raise AigcError(f"dataset '{self.name}' has no class labels, so aigc cannot train the feature classifier "
                            "that FID/KID/precision-recall use; put the images into one sub-folder per class")
        return self.train.labels, self.eval.labels, self.num_classes

    def classifier(self):
        """The cached feature classifier (trained on the training split the first time) and its info."""
        from aigc.metrics.classifier import get_classifier

        train_labels, ref_labels, k = self.feature_classes()
        ref = self.reference_images
        return get_classifier(self.name, self.train.images, train_labels, k, test=(ref, ref_labels),
                              log=lambda msg: print(msg, file=sys.stderr))

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None,
              prompts: list[str] | None = None) -> dict:
        """Sample quality of generated images, uint8 (N, C, H, W) in the dataset's layout: FID / KID /
        precision-recall on the feature classifier, class accuracy for `labels`, class entropy."""
        from aigc.metrics.images import MIN_SAMPLES, image_report

        if tuple(images.shape[1:]) != self.image_shape:
            raise AigcError(f"samples are {tuple(images.shape[1:])} (C, H, W) but {self.name} images are "
                            f"{self.image_shape}")
        if labels is not None:
            if self.num_classes == 0:
                raise AigcError(f"dataset '{self.name}' has no class labels to score class accuracy against")
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise AigcError(f"labels must lie in 0..{self.num_classes - 1}")
        skipped = {}
        if prompts is not None and self.text_tokens == "bpe":         # a captioned folder: no detector knows it
            skipped["prompt_metrics"] = ("skipped: no detector reads a user's captions off the pixels; judge the "
                                         "samples with a captioner (aigc eval RUN --captioner CAPTIONER_RUN)")
        elif prompts is not None:
            raise AigcError(f"prompt accuracy needs the built-in 'shapes' data (a detector reads its attributes off "
                            f"the pixels), not '{self.name}'")
        if len(images) < MIN_SAMPLES:
            return {"feature_metrics": f"skipped: {len(images)} samples (< {MIN_SAMPLES}) are too few for FID/KID/PR",
                    "num_samples": len(images), **skipped}
        try:
            net, info = self.classifier()
        except AigcError as e:                      # e.g. an unlabelled image folder: no feature classifier
            return {"feature_metrics": f"skipped: {e}", "num_samples": len(images), **skipped}
        ref = self.reference_images
        report = image_report(net, self.name, ref, images, self.train.images[:len(images)],
                              labels=labels if self.class_scored else None, ref_split=self.reference_split)
        report["classifier_test_accuracy"] = info.get("test_accuracy")
        return {**report, **skipped}

    # ---------------------------------------------------------------- scoring captions (the captioner family)
    def score_captions(self, texts: list[str], index: torch.Tensor) -> dict:
        """Captions decoded free-running for the eval split's items `index`: BLEU-4 against their own captions and
        the share equal to them (case and spacing aside). Datasets whose captions a parser reads add attribute
        accuracy."""
        from aigc.metrics.captions import bleu4

        refs = self.eval.captions(index)
        return {**bleu4(texts, refs), "exact_match": exact_match(texts, refs), "num_samples": len(texts),
                "reference_split": f"{self.name} eval split"}

    def judge_captions(self, images: torch.Tensor, prompts: list[str], captions: list[str]) -> dict:
        """A captioner's captions of generated samples against the prompts they were made for (the judge that works
        on a user's own data, where no detector exists): BLEU-4 and exact match."""
        from aigc.metrics.captions import bleu4

        out = bleu4(captions, prompts)
        return {"caption_judge_bleu4": out["bleu4"], "caption_judge_exact_match": exact_match(captions, prompts),
                "bleu_signature": out["bleu_signature"], "num_samples": len(captions)}

    def score_result(self, result) -> dict:
        """Score a generation result (aigc/generation.py) of this dataset's kind."""
        return self.score(result.channels_first(), result.label_tensor(), result.prompts)


def exact_match(texts: list[str], refs: list[str]) -> float:
    """The share of texts equal to their reference, ignoring case and spacing."""
    same = [" ".join(t.lower().split()) == " ".join(r.lower().split()) for t, r in zip(texts, refs)]
    return round(sum(same) / max(len(same), 1), 4)


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


def finish_images(ds: Dataset, cfg, resize: bool = True) -> Dataset:
    """Resize / convert channels as the config asks (`resize`) and binarise the eval split once when asked."""
    check_choice("data.binarize", cfg.binarize, ("none", "dynamic"))
    for split in (ds.train, ds.eval) if resize else ():
        split.images = _channels(_resize(split.images, cfg.image_size), cfg.channels)
    if cfg.binarize == "dynamic":
        ds.binarize = True
        ds.reference = ds.eval.images                              # grey: what the feature classifier knows
        ds.eval.images = _binarize_once(ds.eval.images, seed=2024)  # fixed: every run scores the same test set
    return ds


def load_dataset(cfg) -> Dataset:
    """Build the dataset a data config names (its module's `load`)."""
    return importlib.import_module(entry(cfg.name).module).load(cfg)
