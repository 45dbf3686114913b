"""Variational autoencoder (Kingma & Welling 2013) with a Bernoulli decoder on logits.

    log p(x) >= E_q(z|x)[log p(x|z)] - beta * KL(q(z|x) || N(0, I))          (eq. 3; beta = 1: the ELBO)

q(z|x) = N(mu(x), diag(exp(logvar(x)))); z = mu + sigma * eps, eps ~ N(0, I) (the reparameterisation
trick, eq. 10) keeps the sample differentiable in (mu, logvar). The KL to the standard normal prior
is analytic (appendix B):  KL = 1/2 * sum(mu^2 + sigma^2 - 1 - log sigma^2).
log p(x|z) = -BCE(logits(z), x) summed over pixels; for x in [0, 1] (grey levels) this is the usual
'BCE + KL' loss of pytorch/examples, for binarised x it is an exact Bernoulli log-likelihood.

Importance weights for the IWAE bound (Burda et al. 2015, eq. 8):
    log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x),   z_i ~ q(z|x)"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc.train.dist import draw_rows

LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEConfig:
    arch: str = "conv"        # conv | mlp
    z_dim: int = 32
    beta: float = 1.0
    hidden: int = 512         # mlp: width of the hidden layers
    layers: int = 1           # mlp: hidden layers in encoder and decoder
    width: int = 32           # conv: channels of the first conv layer (doubled at each downsampling)


def _down_sizes(size: int) -> list[int]:
    """Spatial sizes after each stride-2 conv: halve while even and > 8 (28->14->7, 32->16->8)."""
    sizes = [size]
    while sizes[-1] > 8 and sizes[-1] % 2 == 0:
        sizes.append(sizes[-1] // 2)
    return sizes


class ConvEncoder(nn.Module):
    def __init__(self, c: int, size: int, width: int, out_dim: int):
        super().__init__()
        sizes = _down_sizes(size)
        layers, ch = [], c
        for i in range(len(sizes) - 1):
            layers += [nn.Conv2d(ch, width * 2 ** i, 4, stride=2, padding=1), nn.SiLU()]
            ch = width * 2 ** i
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(ch * sizes[-1] ** 2, 512), nn.SiLU(), nn.Linear(512, out_dim))

    def forward(self, x):                                  # (B, C, H, W) -> (B, out_dim)
        return self.fc(self.net(x))


class ConvDecoder(nn.Module):
    def __init__(self, c: int, size: int, width: int, z_dim: int):
        super().__init__()
        sizes = _down_sizes(size)
        n = len(sizes) - 1
        self.ch0, self.s0 = width * 2 ** max(n - 1, 0), sizes[-1]
        self.fc = nn.Sequential(nn.Linear(z_dim, 512), nn.SiLU(), nn.Linear(512, self.ch0 * self.s0 ** 2), nn.SiLU())
        layers, ch = [], self.ch0
        for i in reversed(range(n)):
            out = width * 2 ** (i - 1) if i > 0 else width
            layers += [nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1), nn.SiLU()]
            ch = out
        layers.append(nn.Conv2d(ch, c, 3, padding=1))     # logits
        self.net = nn.Sequential(*layers)

    def forward(self, z):                                  # (B, z_dim) -> logits (B, C, H, W)
        return self.net(self.fc(z).view(-1, self.ch0, self.s0, self.s0))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.cfg, self.image_shape = cfg, tuple(image_shape)
        c, h, w = self.image_shape
        if cfg.arch == "conv":
            if h != w:
                raise ValueError(f"conv VAE needs square images, got {h}x{w}")
            self.encoder = ConvEncoder(c, h, cfg.width, 2 * cfg.z_dim)
            self.decoder = ConvDecoder(c, h, cfg.width, cfg.z_dim)
        elif cfg.arch == "mlp":
            d = c * h * w
            self.encoder = nn.Sequential(nn.Flatten(), _mlp([d] + [cfg.hidden] * cfg.layers + [2 * cfg.z_dim]))
            self.decoder = nn.Sequential(_mlp([cfg.z_dim] + [cfg.hidden] * cfg.layers + [d]),
                                         nn.Unflatten(1, self.image_shape))
        else:
            raise ValueError(f"unknown VAE arch '{cfg.arch}' (conv | mlp)")

    def encode(self, x):                                   # x: (B, C, H, W) in [0, 1]
        mu, logvar = self.encoder(x).chunk(2, dim=1)       # (B, z) each
        return mu, logvar

    def decode(self, z):                                   # z: (B, z) -> logits (B, C, H, W)
        return self.decoder(z)

    @staticmethod
    def kl(mu, logvar):                                    # analytic KL(q || N(0, I)), (B,)
        return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)

    def rec_nll(self, logits, x):                          # -log p(x|z), (B,)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)

    def loss(self, x) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        eps = draw_rows(lambda shape: torch.randn(shape, device=mu.device, dtype=mu.dtype), mu.shape)
        z = mu + eps * (0.5 * logvar).exp()
        rec = self.rec_nll(self.decode(z), x)
        kl = self.kl(mu, logvar)
        nelbo = rec + kl                                   # -ELBO, nats per image (beta = 1)
        return {"loss": (rec + self.cfg.beta * kl).mean(), "nelbo": nelbo.mean(), "rec": rec.mean(), "kl": kl.mean()}

    def log_weights(self, x, k: int) -> torch.Tensor:
        """log w for k samples z ~ q(z|x) per image: (k, B)."""
        mu, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        eps = torch.randn((k,) + mu.shape, device=x.device, dtype=mu.dtype)     # (k, B, z)
        z = mu + std * eps
        logits = self.decode(z.flatten(0, 1))                                   # (k*B, C, H, W)
        xk = x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1)
        log_px_z = -self.rec_nll(logits, xk).view(k, -1)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_qz_x = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
        return log_px_z + log_pz - log_qz_x

    def sample(self, n: int) -> torch.Tensor:
        """Mean images (Bernoulli probabilities) decoded from z ~ N(0, I): (n, C, H, W) in [0, 1]."""
        z = torch.randn(n, self.cfg.z_dim, device=next(self.parameters()).device)
        return torch.sigmoid(self.decode(z))

    def reconstruct(self, x) -> torch.Tensor:
        return torch.sigmoid(self.decode(self.encode(x)[0]))

    def interpolate(self, x_a, x_b, steps: int = 10) -> torch.Tensor:
        """Decode straight lines between the posterior means of pairs: (B*steps, C, H, W), row per pair."""
        mu_a, mu_b = self.encode(x_a)[0], self.encode(x_b)[0]
        t = torch.linspace(0, 1, steps, device=x_a.device).view(1, steps, 1)
        z = mu_a[:, None] * (1 - t) + mu_b[:, None] * t                       # (B, steps, z)
        return torch.sigmoid(self.decode(z.flatten(0, 1)))
