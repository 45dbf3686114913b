"""Video GAN networks: the material's algorithm (noise -> a 3D-convolutional generator makes a frame
sequence, upsampled by 3D transposed convolutions -> a 3D-convolutional discriminator scores real and
generated clips), in the style of VGAN (Vondrick et al. 2016) and TGAN (Saito et al. 2017).

- Generator: [z, text embedding] -> Linear -> a (c0, T0, 4, 4) feature map -> stride-2 ConvTranspose3d
  layers with BatchNorm + ReLU that double H and W every layer and T in the first layers until it reaches
  the clip length -> Tanh. Clips are (C, T, H, W) in [-1, 1].
- Discriminator: stride-2 Conv3d layers with LeakyReLU(0.2) (spectrally normalised, Miyato et al. 2018),
  a linear logit, and a projection term <e(y), phi(x)> for the caption (Miyato & Koyama 2018), as in the
  image GAN (models/gan.py).
- Frame-difference loss: a second discriminator of the same design sees only the differences between
  consecutive frames, x[t+1] - x[t] (T - 1 frames). We chose a second network over adding the differences
  as input channels of the first: on its own input the motion discriminator cannot fall back on
  appearance, so the generator is pushed to match the statistics of motion itself (speed, direction, a
  shape that keeps its form while it moves), and the ablation is clean (weight 0 removes the network).
  Both logits enter the losses, the difference term weighted by `frame_diff`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from aigc.models.text_encoder import caption_encoder


@dataclass
class VideoGANConfig:
    z_dim: int = 128
    g_width: int = 32            # channels of G's last hidden layer (doubled towards the input)
    d_width: int = 32            # channels of D's first layer (doubled at each downsampling)
    loss: str = "hinge"          # ns | minimax | hinge (recipes/gan.py)
    spectral_norm: bool = True   # spectral normalisation of both discriminators
    r1: float = 0.0              # R1 penalty on real clips (0 = off)
    r1_every: int = 1
    lr_g: float = 0.0            # TTUR (0 = train.lr)
    lr_d: float = 0.0
    d_steps: int = 1
    frame_diff: float = 1.0      # weight of the frame-difference discriminator (0 = no such network)
    cond: str = "text"           # none | text
    cond_dim: int = 64
    text_layers: int = 1
    text_vocab: list = field(default_factory=list)   # set from the data
    text_tokens: str = "words"    # how text_vocab reads: words | bpe (BPE merges)


def temporal_doublings(frames: int, spatial: int) -> int:
    """How many of the `spatial` upsampling layers also double time: as many as divide `frames`."""
    k = 0
    while k < spatial and frames % 2 ** (k + 1) == 0:
        k += 1
    return k


def spatial_doublings(size: int) -> int:
    n = int(round(math.log2(size / 4))) if size >= 8 else 0
    if size < 8 or 4 * 2 ** n != size:
        raise ValueError(f"the video GAN makes clips whose side is 4 x a power of two (8, 16, 32, 64 ...), "
                         f"not {size} px")
    return n


class VideoGenerator(nn.Module):
    def __init__(self, cfg: VideoGANConfig, shape: tuple[int, int, int, int]):
        super().__init__()
        c, t, h, _ = shape
        self.cfg, self.shape = cfg, shape
        n_s = spatial_doublings(h)
        n_t = temporal_doublings(t, n_s)
        self.t0 = t // 2 ** n_t
        chans = [cfg.g_width * 2 ** (n_s - 1 - i) for i in range(n_s)]
        self.text = caption_encoder(cfg, cfg.cond_dim) if cfg.cond == "text" else None
        zin = cfg.z_dim + (cfg.cond_dim if self.text is not None else 0)
        self.c0 = chans[0]
        self.fc = nn.Linear(zin, self.c0 * self.t0 * 16, bias=False)
        self.fc_norm = nn.Sequential(nn.BatchNorm3d(self.c0), nn.ReLU(True))
        mods = []
        outs = chans[1:] + [c]
        for i, (a, o) in enumerate(zip(chans, outs)):
            k, s = ((4, 4, 4), (2, 2, 2)) if i < n_t else ((3, 4, 4), (1, 2, 2))
            last = i == len(chans) - 1
            mods.append(nn.ConvTranspose3d(a, o, k, s, 1, bias=last))
            if not last:
                mods += [nn.BatchNorm3d(o), nn.ReLU(True)]
        self.net = nn.Sequential(*mods, nn.Tanh())

    def forward(self, z: torch.Tensor, y=None) -> torch.Tensor:
        """z (B, z_dim), y word ids (B, L) -> clips (B, C, T, H, W) in [-1, 1]."""
        if self.text is not None:
            z = torch.cat([z, self.text(y)], 1)
        h = self.fc(z).view(-1, self.c0, self.t0, 4, 4)
        return self.net(self.fc_norm(h))


class ClipDiscriminator(nn.Module):
    """Stride-2 Conv3d layers down to 4x4 pixels -> logit (+ caption projection)."""

    def __init__(self, cfg: VideoGANConfig, shape: tuple[int, int, int, int]):
        super().__init__()
        c, t, h, _ = shape
        sn = spectral_norm if cfg.spectral_norm else (lambda m: m)
        n_s = spatial_doublings(h)
        mods, cur = [], c
        frames = t
        for i in range(n_s):
            o = cfg.d_width * 2 ** i
            down_t = frames >= 4                                         # halve time while it is long enough
            k, s = ((4, 4, 4), (2, 2, 2)) if down_t else ((3, 4, 4), (1, 2, 2))
            mods += [sn(nn.Conv3d(cur, o, k, s, 1)), nn.LeakyReLU(0.2, True)]
            frames = frames // 2 if down_t else frames
            cur = o
        self.features = nn.Sequential(*mods, nn.Flatten())
        with torch.no_grad():
            feat = self.features(torch.zeros(1, *shape)).shape[1]
        self.out = sn(nn.Linear(feat, 1))
        self.text = None
        if cfg.cond == "text":
            self.text = caption_encoder(cfg, cfg.cond_dim)
            self.proj = sn(nn.Linear(cfg.cond_dim, feat, bias=False))

    def forward(self, x: torch.Tensor, y=None) -> torch.Tensor:
        h = self.features(x)
        out = self.out(h).squeeze(1)
        if self.text is not None:
            out = out + (self.proj(self.text(y)) * h).sum(1)
        return out


def frame_differences(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T-1, H, W): x[t+1] - x[t]."""
    return x[:, :, 1:] - x[:, :, :-1]


class VideoDiscriminator(nn.Module):
    """The clip discriminator and, when cfg.frame_diff > 0, the frame-difference discriminator.
    forward -> {"clip": logits (B,), "diff": logits (B,)?}."""

    def __init__(self, cfg: VideoGANConfig, shape: tuple[int, int, int, int]):
        super().__init__()
        c, t, h, w = shape
        self.clip = ClipDiscriminator(cfg, shape)
        self.diff = ClipDiscriminator(cfg, (c, t - 1, h, w)) if cfg.frame_diff > 0 else None

    def forward(self, x: torch.Tensor, y=None) -> dict[str, torch.Tensor]:
        out = {"clip": self.clip(x, y)}
        if self.diff is not None:
            out["diff"] = self.diff(frame_differences(x), y)
        return out
