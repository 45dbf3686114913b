"""A GAN for text: a generator of token distributions against a convolutional discriminator.

Text is discrete, so a sampled token has no gradient with respect to the generator's logits. The
Gumbel-softmax relaxation (Jang et al. 2017; Maddison et al. 2017) replaces the sample by
    y = softmax((logits + g) / tau),   g_i = -log(-log u_i),  u_i ~ U(0, 1)
which tends to a one-hot sample as tau -> 0 (argmax(logits + g) is an exact sample of softmax(logits):
the Gumbel-max trick). In the *hard* (straight-through) mode the forward pass uses the one-hot argmax and
the backward pass the soft y's gradient, so the discriminator sees one-hot sequences from both sides
and cannot tell fake from real just by the softness of the vectors.

G: z -> Linear -> (hidden, L/4) -> two stride-2 transposed 1-D convolutions -> per-position logits (L, V).
D: one-hot (L, V) -> a linear embedding (works for soft vectors too) -> 1-D convolutions (LeakyReLU)
   -> a logit. Both see a fixed-length window of `seq_len` characters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm


@dataclass
class TextGANConfig:
    vocab_size: int = 0          # 0 = set from the tokenizer
    seq_len: int = 32            # characters per generated sequence (a multiple of 4)
    z_dim: int = 64
    hidden: int = 256            # channels of G and D
    embd: int = 64               # D's embedding of the one-hot input
    tau: float = 1.0             # Gumbel-softmax temperature
    hard: bool = True            # straight-through one-hot samples
    loss: str = "ns"             # ns | minimax | hinge (as the image GAN)
    spectral_norm: bool = True   # on D's weights
    lr_g: float = 0.0            # 0 = train.lr
    lr_d: float = 0.0


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed samples of softmax(logits) over the last dim; `hard`: one-hot forward, soft gradient."""
    u = torch.rand(logits.shape, generator=generator, device="cpu").to(logits.device, logits.dtype)
    g = -torch.log((-torch.log(u.clamp(min=1e-10))).clamp(min=1e-10))
    y = F.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return y
    one_hot = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return one_hot - y.detach() + y


class TextGenerator(nn.Module):
    def __init__(self, cfg: TextGANConfig):
        super().__init__()
        if cfg.seq_len % 4 or cfg.seq_len < 4:
            raise ValueError(f"seq_len must be a positive multiple of 4, got {cfg.seq_len}")
        self.cfg, h = cfg, cfg.hidden
        self.fc = nn.Linear(cfg.z_dim, h * cfg.seq_len // 4)
        self.net = nn.Sequential(
            nn.BatchNorm1d(h), nn.ReLU(True),
            nn.ConvTranspose1d(h, h, 4, 2, 1), nn.BatchNorm1d(h), nn.ReLU(True),
            nn.ConvTranspose1d(h, h, 4, 2, 1), nn.BatchNorm1d(h), nn.ReLU(True),
            nn.Conv1d(h, h, 5, padding=2), nn.ReLU(True),
            nn.Conv1d(h, cfg.vocab_size, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, z_dim) -> logits (B, seq_len, vocab)."""
        h = self.fc(z).view(len(z), self.cfg.hidden, self.cfg.seq_len // 4)
        return self.net(h).transpose(1, 2)


class TextDiscriminator(nn.Module):
    def __init__(self, cfg: TextGANConfig):
        super().__init__()
        sn = spectral_norm if cfg.spectral_norm else (lambda m: m)
        h = cfg.hidden
        self.embed = nn.Linear(cfg.vocab_size, cfg.embd, bias=False)
        self.net = nn.Sequential(
            sn(nn.Conv1d(cfg.embd, h, 3, padding=1)), nn.LeakyReLU(0.2, True),
            sn(nn.Conv1d(h, h, 4, 2, 1)), nn.LeakyReLU(0.2, True),
            sn(nn.Conv1d(h, h, 4, 2, 1)), nn.LeakyReLU(0.2, True),
            nn.Flatten(), sn(nn.Linear(h * cfg.seq_len // 4, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: one-hot (or relaxed) sequences (B, seq_len, vocab) -> logits (B,)."""
        return self.net(self.embed(x).transpose(1, 2)).squeeze(1)
