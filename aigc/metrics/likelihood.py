"""Likelihood bounds for latent-variable models, in nats per example.

ELBO:  log p(x) >= E_q[log p(x|z) + log p(z) - log q(z|x)]
IWAE:  log p(x) >= E[log (1/k) sum_i w_i],  w_i = p(x, z_i) / q(z_i|x)   (Burda et al. 2015, eq. 8)
The IWAE bound is never looser than the ELBO and tightens as k grows (their Theorem 1), so
-IWAE_k is the standard estimate of the test NLL."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


@torch.no_grad()
def iwae_nll(log_weights: Callable[[torch.Tensor, int], torch.Tensor], batches: Iterable[torch.Tensor],
             k: int, chunk: int = 100, progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """-IWAE_k averaged over all examples. `log_weights(x, j)` returns (j, B) log importance weights;
    the k samples are drawn in chunks of `chunk` to bound memory."""
    total, total_elbo, n = 0.0, 0.0, 0
    for x in batches:
        parts = []
        for start in range(0, k, chunk):
            parts.append(log_weights(x, min(chunk, k - start)).double())
        log_w = torch.cat(parts)                                     # (k, B)
        total += -log_mean_exp(log_w, 0).sum().item()
        total_elbo += -log_w.mean(0).sum().item()                    # -ELBO from the same samples
        n += x.shape[0]
        if progress:
            progress(x.shape[0])
    return {"nll_iwae": total / n, "nelbo_mc": total_elbo / n, "num": n}
