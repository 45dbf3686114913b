"""Classifier-free guidance (Ho & Salimans 2021): one network trained with the condition sometimes
replaced by a learned empty condition gives a conditional prediction e_c and an unconditional e_u;
sampling uses e = e_u + w (e_c - e_u). w = 1 is the plain conditional model, w = 0 the unconditional
one, w > 1 trades diversity for fidelity to the condition."""

from __future__ import annotations

import torch


def combine(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    return uncond + w * (cond - uncond)


def inputs_per_sample(w: float) -> int:
    """How many inputs per sample `guided` below gives the net at scale w: 1 at w = 0 or 1, else 2 (cond and
    null in one batch); samplers size their chunks by it."""
    return 1 if w in (0, 1) else 2


def guided(net, cond, null, w: float):
    """A denoiser fn(x, t) for the samplers from `net(x, t, c)`: `cond` and `null` are batches of
    condition inputs (the same for every step). Only the forward passes the scale needs are run:
    w = 1 conditional only, w = 0 unconditional only, otherwise both in one batch of 2B."""
    if w == 1:
        return lambda x, t: net(x, t, cond)
    if w == 0:
        return lambda x, t: net(x, t, null)
    both = torch.cat([cond, null])

    def fn(x, t):
        out = net(torch.cat([x, x]), torch.cat([t, t]), both)
        c, u = out.chunk(2)
        return combine(c, u, w)

    return fn
