"""The small image classifier whose penultimate features define aigc's FID / KID / precision-recall.

It is trained once per dataset on the real training split (a few CPU seconds to a minute) and
cached, keyed by dataset name, FEATURE_VERSION and a digest of the training data, so every later
evaluation reuses it. Features are the 128-d activations before the last layer. Scores computed on
these features are *not* Inception FID and must be reported with their definition."""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc.io import cache

FEATURE_VERSION = 1
FEATURE_DIM = 128


class FeatureNet(nn.Module):
    def __init__(self, channels: int, size: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.meta = {"channels": channels, "size": size, "num_classes": num_classes}

    def features(self, x):                                  # x: (B, C, H, W) in [0, 1] -> (B, 128)
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def data_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    h.update(images[:: max(1, len(images) // 512)].contiguous().numpy().tobytes())
    h.update(labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255) if images.dtype == torch.uint8 else images.float()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = 2,
                     batch_size: int = 128, seed: int = 0, min_steps: int = 200, max_steps: int = 1000,
                     progress: bool = False) -> FeatureNet:
    """Plain supervised training: Adam with one-cycle LR, light random shifts (so features do not key
    on exact pixels); `epochs` passes, clamped to [min_steps, max_steps] optimiser steps (a progress bar on
    stderr with `progress`)."""
    import sys

    from tqdm import tqdm

    g = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(images))
    per_epoch = len(images) // batch_size
    steps = min(max(epochs * per_epoch, min_steps), max_steps)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = FeatureNet(images.shape[1], images.shape[2], num_classes)
        opt = torch.optim.Adam(net.parameters(), 2e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
        net.train()
        perm, pos = torch.randperm(len(images), generator=g), 0
        for _ in tqdm(range(steps), desc="feature classifier", unit="step", file=sys.stderr, disable=not progress,
                      mininterval=0.5 if sys.stderr.isatty() else 30):
            if pos + batch_size > len(images):
                perm, pos = torch.randperm(len(images), generator=g), 0
            idx = perm[pos:pos + batch_size]
            pos += batch_size
            x = _to_float(images[idx])
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(x, (dy, dx), (2, 3))
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += (net(_to_float(images[i:i + batch_size])).argmax(1) == labels[i:i + batch_size]).sum().item()
    return correct / max(len(images), 1)


def get_classifier(name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   test: tuple[torch.Tensor, torch.Tensor] | None = None, log=None) -> tuple[FeatureNet, dict]:
    """The cached classifier for this dataset, trained on (images, labels) the first time.
    Returns (net, info) where info has the cache key, its test accuracy and whether it was reused."""
    key = f"{name}-v{FEATURE_VERSION}-{data_digest(images, labels)}"
    cached = cache.load_weights("classifiers", key)
    if cached is not None:
        state, meta = cached
        net = FeatureNet(meta["channels"], meta["size"], meta["num_classes"])
        net.load_state_dict(state)
        return net.eval(), {**meta, "key": key, "reused": True}
    if log:
        log(f"training the {name} feature classifier once, for the sample metrics (cached in "
            f"{cache.cache_dir('classifiers')}) ...")
    net = train_classifier(images, labels, num_classes, progress=log is not None)
    meta = {**net.meta, "dataset": name, "images": len(images),
            "test_accuracy": round(accuracy(net, *test), 4) if test else None}
    cache.save_weights("classifiers", key, net.state_dict(), meta)
    return net, {**meta, "key": key, "reused": False}


@torch.no_grad()
def extract(net: FeatureNet, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 128), class probabilities (N, K)) of uint8 or [0,1] float images (N, C, H, W)."""
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = net.features(_to_float(images[i:i + batch_size]))
        feats.append(f)
        probs.append(net.head(f).softmax(1))
    return torch.cat(feats), torch.cat(probs)
