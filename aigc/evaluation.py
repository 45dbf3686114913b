"""Evaluation wiring: sample files and runs scored against real data (metrics + data together).

- `score_images`: FID / KID / precision-recall on the dataset classifier's features, class
  accuracy + entropy, and on `shapes` prompt accuracy from the training-free detector.
- `eval_samples_file`: `aigc eval --samples FILE.npz --data DATASET`, for samples made by any tool."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from aigc.data import Dataset, shapes
from aigc.errors import AigcError
from aigc.metrics.classifier import get_classifier
from aigc.metrics.images import MIN_SAMPLES, image_report
from aigc.metrics.prompts import prompt_accuracy


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def classifier_for(data: Dataset):
    """The cached feature classifier of a dataset (trained on its training split the first time)."""
    if data.name == "shapes":                      # 18 classes: every (color, shape) pair -> richer features
        labels = data.train.attrs["color"] * 3 + data.train.attrs["shape"]
        test = (data.eval.images, data.eval.attrs["color"] * 3 + data.eval.attrs["shape"])
        k = 18
    else:
        if data.train.labels is None or data.num_classes < 2:
            raise AigcError(f"dataset '{data.name}' has no class labels, so aigc cannot train the feature classifier "
                            "that FID/KID/precision-recall use; put the images into one sub-folder per class")
        labels, test, k = data.train.labels, (data.eval.images, data.eval.labels), data.num_classes
    net, info = get_classifier(data.name, data.train.images, labels, k, test=test, log=_log)
    return net, info


def score_images(data: Dataset, images: torch.Tensor, labels: torch.Tensor | None = None,
                 prompts: list[str] | None = None) -> dict:
    """images: uint8 (N, C, H, W) in the dataset's layout."""
    if tuple(images.shape[1:]) != data.image_shape:
        raise AigcError(f"samples are {tuple(images.shape[1:])} (C, H, W) but {data.name} images are {data.image_shape}")
    out = {}
    if labels is not None:
        if data.num_classes == 0:
            raise AigcError(f"dataset '{data.name}' has no class labels to score class accuracy against")
        if labels.min() < 0 or labels.max() >= data.num_classes:
            raise AigcError(f"labels must lie in 0..{data.num_classes - 1}")
    if len(images) >= MIN_SAMPLES:
        net, info = classifier_for(data)
        ref = data.eval.images
        report = image_report(net, data.name, ref, images, data.train.images[:len(images)],
                              labels=labels if data.name != "shapes" else None,
                              ref_split="test" if data.name == "mnist" else "eval")
        report["classifier_test_accuracy"] = info.get("test_accuracy")
        out.update(report)
    else:
        out["feature_metrics"] = f"skipped: {len(images)} samples (< {MIN_SAMPLES}) are too few for FID/KID/PR"
        out["num_samples"] = len(images)
    if prompts is not None:
        if data.name != "shapes":
            raise AigcError("prompt accuracy needs the built-in 'shapes' data (its attributes are read off the pixels)")
        out.update(shapes_prompt_accuracy(images, prompts, data.holdout))
    return out


def shapes_prompt_accuracy(images: torch.Tensor, prompts: list[str], holdout: list | None = None) -> dict:
    """Prompt accuracy and per-attribute accuracy; with `holdout` (color, shape) pairs that the model never
    saw, also `prompt_accuracy_seen` / `prompt_accuracy_holdout` over the prompts naming seen / held-out pairs."""
    det = shapes.detect(images)
    parsed = [shapes.parse_caption(p) for p in prompts]
    if not any(parsed):
        raise AigcError("none of the prompts names a known shape, color, size or position")
    requested = {k: torch.tensor([p.get(k, -1) for p in parsed]) for k in ("color", "shape", "size", "position")}
    out = prompt_accuracy(det, requested)
    if holdout:
        pairs = shapes.parse_holdout(holdout)
        held = torch.tensor([(p.get("color", -1), p.get("shape", -1)) in pairs for p in parsed])
        for name, sel in (("seen", ~held), ("holdout", held)):
            if sel.any():
                sub = prompt_accuracy({k: v[sel] for k, v in det.items()}, {k: v[sel] for k, v in requested.items()})
                out[f"prompt_accuracy_{name}"] = sub["prompt_accuracy"]
                out[f"num_{name}"] = int(sel.sum())
    return out


def load_samples_npz(path: Path) -> dict:
    """Validate a DESIGN.md image sample file: images uint8 [N,H,W,C], labels int [N]?, prompts str [N]?"""
    path = Path(path)
    if not path.is_file():
        raise AigcError(f"sample file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise AigcError(f"{path} is not a readable npz file: {e}") from None
    if "images" not in arrays:
        raise AigcError(f"{path} has no 'images' array (keys: {', '.join(arrays) or 'none'}); "
                        "expected images uint8 [N,H,W,C], optional labels [N] and prompts [N]")
    im = arrays["images"]
    if im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] not in (1, 3):
        raise AigcError(f"{path}: 'images' must be uint8 [N,H,W,C] with C = 1 or 3, got {im.dtype} {list(im.shape)}")
    out = {"images": torch.from_numpy(np.ascontiguousarray(im.transpose(0, 3, 1, 2)))}
    if "labels" in arrays:
        lab = arrays["labels"]
        if lab.ndim != 1 or len(lab) != len(im) or not np.issubdtype(lab.dtype, np.integer):
            raise AigcError(f"{path}: 'labels' must be integers [N] matching the {len(im)} images")
        out["labels"] = torch.from_numpy(lab.astype(np.int64))
    if "prompts" in arrays:
        pr = arrays["prompts"]
        if pr.ndim != 1 or len(pr) != len(im) or pr.dtype.kind != "U":
            raise AigcError(f"{path}: 'prompts' must be unicode strings [N] matching the {len(im)} images")
        out["prompts"] = [str(p) for p in pr]
    return out


def eval_samples_file(path: Path, data: Dataset, samples: dict | None = None) -> dict:
    s = samples or load_samples_npz(path)
    result = score_images(data, s["images"], s.get("labels"), s.get("prompts"))
    return {"samples": str(path), "dataset": data.name, **result}


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
