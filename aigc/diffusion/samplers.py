"""DDPM ancestral sampling and DDIM sampling over any subsequence of the T timesteps.

A denoiser is any `fn(x_t, t) -> out` with t an int64 tensor (B,), out the model's prediction in the
schedule's parameterisation (eps or v); the samplers convert it with `Schedule.split`.

- DDPM (Ho et al. 2020): x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1 - abar_t) eps) + sigma_t z (eq. 11),
  written here in its equivalent posterior form mu~_t(x_t, x_0) = sqrt(abar_{t-1}) beta_t/(1 - abar_t) x_0
  + sqrt(alpha_t)(1 - abar_{t-1})/(1 - abar_t) x_t (eq. 7) so the x_0 estimate can be clipped, with
  sigma_t^2 = beta~_t = (1 - abar_{t-1})/(1 - abar_t) beta_t. On a subsequence of timesteps (fewer steps)
  alpha_t is replaced by abar_t / abar_prev (the "respaced" chain of Nichol & Dhariwal 2021).
- DDIM (Song et al. 2021): x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z
  (eq. 12) with sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev) (eq. 16):
  eta = 0 is deterministic given x_T, eta = 1 is the DDPM posterior again."""

from __future__ import annotations

from typing import Callable

import torch

from aigc.diffusion.schedule import Schedule

SAMPLERS = ("ddim", "ddpm")


def timesteps(T: int, steps: int) -> list[int]:
    """`steps` timesteps from T-1 down to 0, evenly spaced (all T when steps == T)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    if steps == 1:
        return [T - 1]
    ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    return sorted(set(ts), reverse=True)


def _noise(shape, generator, device, dtype):
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)


def _run(step: Callable, fn, schedule: Schedule, shape, steps, generator, device, dtype, x_T, clip,
         record: int, progress):
    x = _noise(shape, generator, device, dtype) if x_T is None else x_T.to(device, dtype)
    ts = timesteps(schedule.T, steps or schedule.T)
    keep = set(torch.linspace(0, len(ts) - 1, record).round().long().tolist()) if record > 0 else set()
    frames = [x.clone()] if record > 0 else []
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
        x0, eps = schedule.split(fn(x, tt), x, tt, clip)
        a_t = schedule.abar(tt, x)
        a_prev = schedule.abar(torch.full_like(tt, prev), x)
        x = step(x, x0, eps, a_t, a_prev, last=prev < 0)
        if i in keep:
            frames.append(x.clone())
        if progress:
            progress(1)
    return (x, frames) if record > 0 else x


@torch.no_grad()
def ddpm_sample(fn, schedule: Schedule, shape, steps: int | None = None, generator=None, device="cpu",
                dtype=torch.float32, x_T=None, clip: bool = True, record: int = 0, progress=None):
    """Ancestral sampling (DDPM eq. 11 / 7). Returns x_0, or (x_0, frames) with `record` + 1 snapshots of
    x_t from x_T to x_0 when record > 0."""

    def step(x, x0, eps, a_t, a_prev, last):
        beta = 1 - a_t / a_prev
        mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x
        if last:
            return mean
        var = (1 - a_prev) / (1 - a_t) * beta
        return mean + var.sqrt() * _noise(x.shape, generator, x.device, x.dtype)

    return _run(step, fn, schedule, shape, steps, generator, device, dtype, x_T, clip, record, progress)


@torch.no_grad()
def ddim_sample(fn, schedule: Schedule, shape, steps: int = 50, eta: float = 0.0, generator=None, device="cpu",
                dtype=torch.float32, x_T=None, clip: bool = True, record: int = 0, progress=None):
    """DDIM (eq. 12 with sigma of eq. 16); eta = 0 deterministic given x_T (or the generator's seed)."""

    def step(x, x0, eps, a_t, a_prev, last):
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and not last:
            x = x + sigma * _noise(x.shape, generator, x.device, x.dtype)
        return x

    return _run(step, fn, schedule, shape, steps, generator, device, dtype, x_T, clip, record, progress)


def sample(kind: str, fn, schedule: Schedule, shape, steps: int | None = None, **kw):
    """Dispatch by name: 'ddim' (default 50 steps) or 'ddpm' (default all T steps)."""
    if kind == "ddim":
        return ddim_sample(fn, schedule, shape, steps or 50, **kw)
    if kind == "ddpm":
        kw.pop("eta", None)
        return ddpm_sample(fn, schedule, shape, steps, **kw)
    raise ValueError(f"unknown sampler '{kind}'; valid: {', '.join(SAMPLERS)}")
