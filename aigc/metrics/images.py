"""Sample-quality report for a set of generated images against a real reference split, on the
features of the dataset's own classifier (metrics/classifier.py). Every figure carries its
definition: `features`, `num_samples`, `reference_split`, and the real-vs-real floor."""

from __future__ import annotations

import math

import torch

from aigc.metrics.classifier import FEATURE_VERSION, extract
from aigc.metrics.features import fid, kid, precision_recall

MIN_SAMPLES = 2 * 128          # below this the 128-d feature covariance is rank-deficient: refused
RELIABLE_SAMPLES = 10000       # FID is biased upwards at small N; below this it is flagged


def class_entropy(pred: torch.Tensor, num_classes: int) -> float:
    """Entropy (nats) of the histogram of predicted classes; ln(K) when every class is equally present."""
    p = torch.bincount(pred, minlength=num_classes).double()
    p = p / p.sum()
    return float(-(p[p > 0] * p[p > 0].log()).sum())


def image_report(net, dataset_name: str, real_ref: torch.Tensor, fake: torch.Tensor, real_train: torch.Tensor,
                 labels: torch.Tensor | None = None, ref_split: str = "test") -> dict:
    """real_ref: the reference split (uint8 N,C,H,W); fake: generated images, same layout;
    real_train: a training subset of the same size, for the real-vs-real floor."""
    n = len(fake)
    if n < MIN_SAMPLES:
        raise ValueError(f"{n} samples are too few for feature statistics; use at least {MIN_SAMPLES} "
                         f"(10000 for comparable FID)")
    f_ref, _ = extract(net, real_ref)
    f_fake, p_fake = extract(net, fake)
    f_tr, _ = extract(net, real_train[:n])
    tag = f"{dataset_name}-clf-v{FEATURE_VERSION}"
    prec, rec = precision_recall(f_ref[:n], f_fake[:len(f_ref)])
    kid_mean, kid_std = kid(f_ref, f_fake)
    k = p_fake.shape[1]
    pred = p_fake.argmax(1)
    out = {
        "fid": round(fid(f_ref, f_fake), 3),
        "kid": round(kid_mean, 5), "kid_std": round(kid_std, 5),
        "precision": round(prec, 4), "recall": round(rec, 4),
        "class_entropy": round(class_entropy(pred, k), 4), "class_entropy_max": round(math.log(k), 4),
        "real_vs_real_fid": round(fid(f_ref, f_tr), 3),
        "features": tag, "num_samples": n, "reference_split": f"{ref_split} ({len(real_ref)} images)",
        "fid_name": f"FID[{tag}, {n} samples vs {ref_split}]",
    }
    if labels is not None:
        out["class_accuracy"] = round(float((pred == labels.to(pred.device)).double().mean()), 4)
    if n < RELIABLE_SAMPLES:
        out["fid_warning"] = (f"only {n} samples: FID is biased upwards at small N and not comparable with "
                              f"{RELIABLE_SAMPLES}-sample figures")
    return out
