"""Noise schedules and the forward process of DDPM (Ho et al. 2020).

Notation of the paper: beta_t the variance added at step t, alpha_t = 1 - beta_t,
abar_t = prod_{s<=t} alpha_s. Timesteps are 0-based here (t = 0 .. T-1 stands for the paper's 1 .. T).

- linear: beta from 1e-4 to 0.02 over T = 1000 steps (DDPM, section 4), rescaled by 1000/T for other T;
- cosine: abar_t = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), s = 0.008, betas clipped at 0.999
  (Nichol & Dhariwal 2021, eq. 17): less noise early on, which helps low-resolution images and
  few-step sampling.
- `shift` s > 1 divides the signal-to-noise ratio at every step by s^2, abar' = abar / (abar + s^2 (1 - abar))
  (the shifted schedules of "simple diffusion", Hoogeboom et al. 2023, and of Stable Diffusion 3): where many
  pixels carry the same information (a high resolution, or the frames of a clip) a given noise level hides
  less of it, so training and sampling spend too few steps where the layout is still undecided.
Forward process in closed form (DDPM eq. 4): q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), so
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
The network predicts eps (DDPM eq. 14's loss ||eps - eps_theta(x_t, t)||^2) or, as an option, the velocity
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022), from which x_0 and eps follow."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")


def betas_for(kind: str, T: int) -> torch.Tensor:
    if kind == "linear":
        scale = 1000 / T
        return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        t = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule '{kind}'; valid: {', '.join(SCHEDULES)}")


class Schedule:
    """The per-step constants of a T-step schedule (float64 for accuracy, cast when used)."""

    def __init__(self, kind: str = "linear", T: int = 1000, prediction: str = "eps", shift: float = 1.0):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{prediction}'; valid: {', '.join(PREDICTIONS)}")
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.kind, self.T, self.prediction, self.shift = kind, T, prediction, shift
        self.betas = betas_for(kind, T)
        a = torch.cumprod(1 - self.betas, 0)
        if shift != 1:
            a = a / (a + shift ** 2 * (1 - a))
        self.alphas_cumprod = a
        self._abar = torch.cat([torch.ones(1, dtype=torch.float64), a])   # index t + 1
        if shift != 1:
            self.betas = 1 - self._abar[1:] / self._abar[:-1]
        self._cast: dict[tuple, torch.Tensor] = {}      # _abar per (device, dtype): no host round trip per call

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar_t for a batch of timesteps, shaped to broadcast against `like` (B, ...); t = -1 gives 1."""
        key = (like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = self._abar.to(like.device, like.dtype)     # cast first, then index: same values
        a = self._cast[key][t.to(like.device) + 1]
        return a.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4)."""
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network learns to output: eps, or v = sqrt(abar) eps - sqrt(1 - abar) x_0."""
        if self.prediction == "eps":
            return noise
        a = self.abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def snr(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t), shaped like `abar`."""
        a = self.abar(t, like)
        return a / (1 - a)

    def min_snr_weight(self, t: torch.Tensor, gamma: float, like: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma loss weight (Hang et al. 2023) for this schedule's prediction: the squared error of
        the x_0 estimate is weighted by min(SNR_t, gamma), so the low-noise steps, whose tiny x_0 errors
        would otherwise dominate, stop pulling the shared weights away from the rest. The eps loss already
        weights the x_0 error by SNR_t and the v loss by SNR_t + 1 (see `split`), so the factor applied to
        them is min(SNR_t, gamma) / SNR_t or / (SNR_t + 1)."""
        snr = self.snr(t, like)
        return snr.clamp(max=gamma) / (snr if self.prediction == "eps" else snr + 1)

    def split(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip: bool = False):
        """Model output at (x_t, t) -> (x_0 estimate, eps estimate). With `clip`, x_0 is clamped to the
        data range [-1, 1] and eps recomputed from it so the two stay consistent."""
        a = self.abar(t, x_t)
        if self.prediction == "eps":
            eps = out
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        else:
            x0 = a.sqrt() * x_t - (1 - a).sqrt() * out
            eps = (1 - a).sqrt() * x_t + a.sqrt() * out
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return x0, eps
