"""Evaluation wiring: sample files and runs scored against real data (metrics + data together).

- `score_images`: FID / KID / precision-recall on the dataset classifier's features, class
  accuracy + entropy, and on `shapes` prompt accuracy from the training-free detector.
- `score_videos`: on moving-shapes the text-to-video metrics of metrics/video.py; on moving-mnist
  FID / KID / precision-recall on 28x28 crops around each digit of every frame (MNIST-classifier
  features) and digit-identity consistency across frames.
- `eval_samples_file`: `aigc eval --samples FILE.npz --data DATASET`, for samples made by any tool."""

from __future__ import annotations

import sys
import zipfile
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
    out = {**prompt_accuracy(det, requested), "stray_share": round(float(det["stray"].double().mean()), 4)}
    if holdout:
        pairs = shapes.parse_holdout(holdout)
        held = torch.tensor([(p.get("color", -1), p.get("shape", -1)) in pairs for p in parsed])
        for name, sel in (("seen", ~held), ("holdout", held)):
            if sel.any():
                sub = prompt_accuracy({k: v[sel] for k, v in det.items()}, {k: v[sel] for k, v in requested.items()})
                out[f"prompt_accuracy_{name}"] = sub["prompt_accuracy"]
                out[f"num_{name}"] = int(sel.sum())
    return out


def score_videos(data, videos: torch.Tensor, prompts: list[str] | None = None, component: bool = True,
                 shape_rule: str = "fit") -> dict:
    """videos: uint8 (N, C, T, H, W) in the dataset's layout. moving-shapes: `component` = False reads every
    foreground pixel as the shape (the strict reading), `shape_rule` = "ratio" tells shapes by the rule
    used before 2026-11-25 (see shapes.detect)."""
    from aigc.data import video
    from aigc.metrics.video import clip_metrics

    if tuple(videos.shape[1:]) != data.video_shape:
        raise AigcError(f"samples are {tuple(videos.shape[1:])} (C, T, H, W) but these {data.name} clips are "
                        f"{data.video_shape}: a different frame count or size")
    out = {"num_samples": len(videos)}
    if data.name == "moving-shapes":
        requested = None
        if prompts is not None:
            parsed = [video.parse_clip_caption(p) for p in prompts]
            if not any(parsed):
                raise AigcError("none of the prompts names a known shape, color or direction")
            requested = {k: torch.tensor([p.get(k, -1) for p in parsed]) for k in ("color", "shape", "direction")}
        out.update(clip_metrics(video.detect_shape_clips(videos, component=component, shape_rule=shape_rule),
                                requested))
        return out
    if prompts is not None:
        raise AigcError(f"prompt metrics need moving-shapes clips, not {data.name}")
    return {**out, **digit_clip_report(data, videos)}


def digit_clip_report(data, videos: torch.Tensor) -> dict:
    """moving-mnist: per-frame FID etc. on 28x28 crops around each digit, against crops of the evaluation
    clips (test digits) found the same way, and the share of clips whose digits are classified the same
    in every frame (digit_consistency; as a multiset of classes for 2 digits)."""
    from aigc.data.video import digit_crops
    from aigc.metrics.classifier import extract

    k = data.eval["labels"].shape[1]
    net, info = classifier_for(data.digits)
    fake = digit_crops(videos, k)                                    # (N, T, D, 1, 28, 28)
    real = digit_crops(data.eval["video"], k)
    train = digit_crops(data.make(max(1, len(videos)), torch.Generator().manual_seed(99))["video"], k)
    flat = lambda c: c.flatten(0, 2)                                 # noqa: E731
    out = {"crops_per_clip": fake.shape[1] * k}
    if len(flat(fake)) >= MIN_SAMPLES:
        out.update(image_report(net, "mnist", flat(real), flat(fake), flat(train), ref_split="moving-mnist eval crops"))
    else:
        out["feature_metrics"] = f"skipped: {len(flat(fake))} crops (< {MIN_SAMPLES}) are too few for FID/KID/PR"
    _, probs = extract(net, flat(fake))
    pred = probs.argmax(1).view(fake.shape[0], fake.shape[1], k).sort(-1).values.cpu()
    out["digit_consistency"] = round(float((pred == pred[:, :1]).all(-1).all(-1).double().mean()), 4)
    out["classifier_test_accuracy"] = info.get("test_accuracy")
    return out


def load_videos_npz(path: Path) -> dict:
    """Validate a DESIGN.md video sample file: videos uint8 [N,T,H,W,C], prompts str [N]?"""
    arrays = _read_npz(path)
    out = {"videos": _sample_array(path, arrays, "videos", "N,T,H,W,C", " and optional prompts [N]")}
    if "prompts" in arrays:
        out["prompts"] = _prompts(path, arrays["prompts"], len(out["videos"]))
    return out


def _sample_array(path, arrays: dict, key: str, layout: str, extras: str) -> torch.Tensor:
    """arrays[key] checked as uint8 [layout] with C = 1 or 3 last, returned channels-first (N, C, ...)."""
    if key not in arrays:
        raise AigcError(f"{path} has no '{key}' array (keys: {', '.join(arrays) or 'none'}); "
                        f"expected {key} uint8 [{layout}]{extras}")
    a = arrays[key]
    ndim = layout.count(",") + 1
    if a.dtype != np.uint8 or a.ndim != ndim or a.shape[-1] not in (1, 3):
        raise AigcError(f"{path}: '{key}' must be uint8 [{layout}] with C = 1 or 3, got {a.dtype} {list(a.shape)}")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))


def _read_npz(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AigcError(f"sample file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise AigcError(f"{path} is not a readable npz file: {e}") from None


def _prompts(path, pr: np.ndarray, n: int) -> list[str]:
    if pr.ndim != 1 or len(pr) != n or pr.dtype.kind != "U":
        raise AigcError(f"{path}: 'prompts' must be unicode strings [N] matching the {n} samples")
    return [str(p) for p in pr]


def load_samples_npz(path: Path) -> dict:
    """Validate a DESIGN.md image sample file: images uint8 [N,H,W,C], labels int [N]?, prompts str [N]?"""
    arrays = _read_npz(path)
    im = _sample_array(path, arrays, "images", "N,H,W,C", ", optional labels [N] and prompts [N]")
    out = {"images": im}
    if "labels" in arrays:
        lab = arrays["labels"]
        if lab.ndim != 1 or len(lab) != len(im) or not np.issubdtype(lab.dtype, np.integer):
            raise AigcError(f"{path}: 'labels' must be integers [N] matching the {len(im)} images")
        out["labels"] = torch.from_numpy(lab.astype(np.int64))
    if "prompts" in arrays:
        out["prompts"] = _prompts(path, arrays["prompts"], len(im))
    return out


def eval_samples_file(path: Path, data: Dataset, samples: dict | None = None) -> dict:
    s = samples or load_samples_npz(path)
    if "videos" in s:
        result = score_videos(data, s["videos"], s.get("prompts"))
    else:
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
