"""Distances between two sets of feature vectors (rows), in float64.

FID (Heusel et al. 2017):  ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})
    Tr((S_r S_g)^{1/2}) is computed as the sum of the square roots of the eigenvalues of
    S_r^{1/2} S_g S_r^{1/2} (symmetric PSD, so eigh is stable); no scipy needed.
KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3,
    averaged over random subsets; unbiased, so it is ~0 (and can be < 0) for equal distributions.
Improved precision / recall (Kynkaenniemi et al. 2019, k = 3): each real feature gets a ball reaching
    its k-th nearest real neighbour; precision = share of generated samples inside some real ball,
    recall = share of real samples inside some generated ball (balls from the generated set)."""

from __future__ import annotations

import torch


def _stats(f: torch.Tensor):
    f = f.double()
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (len(f) - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    mu_r, s_r = _stats(real)
    mu_g, s_g = _stats(fake)
    root = _sqrt_psd(s_r)
    covmean_trace = torch.linalg.eigvalsh(root @ s_g @ root).clamp(min=0).sqrt().sum()
    return float((mu_r - mu_g).pow(2).sum() + s_r.trace() + s_g.trace() - 2 * covmean_trace)


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 50, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the unbiased MMD^2 over `subsets` random subsets."""
    real, fake = real.double(), fake.double()
    d = real.shape[1]
    m = min(subset_size, len(real), len(fake))
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=g)[:m]]
        y = fake[torch.randperm(len(fake), generator=g)[:m]]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - kxx.diagonal().sum()) + (kyy.sum() - kyy.diagonal().sum())) / (m * (m - 1)) \
            - 2 * kxy.mean()
        vals.append(mmd)
    v = torch.stack(vals)
    return float(v.mean()), float(v.std()) if len(v) > 1 else 0.0


def _kth_radius(f: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row."""
    out = []
    for i in range(0, len(f), chunk):
        dist = torch.cdist(f[i:i + chunk], f)
        out.append(dist.kthvalue(k + 1, dim=1).values)          # +1: the row itself is at distance 0
    return torch.cat(out)


def _coverage(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> float:
    inside = []
    for i in range(0, len(query), chunk):
        dist = torch.cdist(query[i:i + chunk], ref)
        inside.append((dist <= radii[None]).any(1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    real, fake = real.double(), fake.double()
    precision = _coverage(fake, real, _kth_radius(real, k))
    recall = _coverage(real, fake, _kth_radius(fake, k))
    return precision, recall
