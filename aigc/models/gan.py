"""Generative adversarial networks (Goodfellow et al. 2014): a generator G(z) and a discriminator D(x).

    min_G max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))]                       (eq. 1)

Architectures (the losses live in recipes/gan.py):
- `mlp`: the material's GAN, G = Linear(z,256)-LeakyReLU(0.2)-Linear(256,784)-Tanh and
  D = Linear(784,256)-LeakyReLU(0.2)-Linear(256,1) (hidden width and depth configurable).
- `dcgan` (Radford et al. 2015): G projects z to a small feature map (7x7 for 28 px, 4x4 for 32/64 px)
  and doubles it with stride-2 transposed convolutions, BatchNorm + ReLU, Tanh output; D mirrors it with
  stride-2 convolutions and LeakyReLU(0.2). Works for 28, 32 and 64 px, 1 or 3 channels.
  `g_convs` / `d_convs` add 3x3 stride-1 convolutions at each resolution (as in the "standard CNN" of
  the SNGAN paper, Miyato et al. 2018, table 3). Radford et al.'s D has one convolution per resolution;
  at 32 channels on MNIST that D is too weak to tell well-formed digits from scribbles, and it is what
  held the 5-minute FID at about 60 (64 for the plain nets vs 8 with g_convs = d_convs = 1 in the
  preset: benchmarks/run.py, rows gan-mnist-5min-*).
Both output images in [-1, 1]; D outputs a logit (no sigmoid, for numerically stable losses).

Conditioning (`cond = class | text`): G gets the condition embedding concatenated to z; D is a
*projection discriminator* (Miyato & Koyama 2018): D(x, y) = psi(phi(x)) + <e(y), phi(x)>. We chose
projection over concatenating y to D's input because it makes "does this image match y" an explicit inner
product in D's feature space (the conditioning of SNGAN and BigGAN), where a concatenated label is just
one more input D may learn to ignore.
Text conditions come from a small Transformer text encoder (models/text_encoder.py), one per network.
`aux_words` adds a caption-word classifier to D (a linear layer on its features, a logit per vocabulary entry):
the auxiliary classifier of AC-GAN (Odena et al. 2017) with the caption's words for classes, trained on real
images, with G trained to make its samples read as their captions (recipes/gan.py). Projection alone left
"circle" and "square" drawn as one blob: D's features told them apart (a linear probe on them reads 97%) but
nothing made D use that for the condition (docs/gan.md).

`d_pool` sums D's last feature map over space before the logit, the projection and the word classifier, as the
ResNet discriminators of SNGAN (Miyato et al. 2018) and BigGAN do, instead of DCGAN's flattening. A flattened map
gives every 8 x 8 px cell its own weights, so what D learns of a shape in one place says nothing about another:
with shapes anywhere on the canvas (not on the built-in shapes' grid) D's classifier read the shape word of real
images 0.41 after 5 minutes flattened and 0.64 pooled, and G's shapes followed (0.36 -> 0.53; docs/gan.md).
The price is the position: a pooled D sees where things are only through the border.

Spectral normalisation (Miyato et al. 2018) divides each D weight by its largest singular value (one
power iteration per step), making D roughly 1-Lipschitz; with it D uses no BatchNorm."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from aigc.models.text_encoder import caption_encoder, caption_vocab


@dataclass
class GANConfig:
    arch: str = "dcgan"          # mlp | dcgan
    z_dim: int = 100
    hidden: int = 256            # mlp: width of the hidden layer(s)
    layers: int = 1              # mlp: hidden layers in G and in D
    g_width: int = 64            # dcgan: channels of G's last hidden layer (doubled towards the input)
    d_width: int = 64            # dcgan: channels of D's first layer (doubled at each downsampling)
    g_convs: int = 0             # dcgan: extra 3x3 stride-1 convolutions at each hidden resolution of G
    d_convs: int = 0             # dcgan: extra 3x3 stride-1 convolutions after each downsampling of D
    d_pool: bool = False         # dcgan: D's outputs read its last feature map summed over space, not flattened
    loss: str = "ns"             # ns (non-saturating, default) | minimax (saturating) | hinge
    spectral_norm: bool = False  # spectral normalisation of D's weights (then D has no BatchNorm)
    d_batchnorm: bool = True     # dcgan: BatchNorm in D's hidden layers when not spectrally normalised
    r1: float = 0.0              # R1 gradient penalty weight gamma (0 = off)
    r1_every: int = 1            # lazy R1: apply every N steps, scaled by N (StyleGAN2)
    lr_g: float = 0.0            # TTUR: G's learning rate (0 = train.lr)
    lr_d: float = 0.0            # TTUR: D's learning rate (0 = train.lr)
    d_steps: int = 1             # D updates per G update
    mode_seeking: float = 0.0    # weight of the mode-seeking term (Mao et al. 2019) in G's loss (0 = off)
    mode_seeking_pool: int = 1   # the term's distance on samples average-pooled by this factor (1 = pixels)
    mismatch: float = 0.0        # weight of D's loss on real inputs shown with another's condition (0 = off)
    mismatch_words: bool = False  # those captions differ in one word: a word of the rolled caption put in its place
    aux_words: float = 0.0       # weight of D's caption-word classifier (AC-GAN; cond = text; 0 = off)
    words_fake: bool = False     # the word classifier also learns that generated images show no word
    cond: str = "none"           # none | class | text
    cond_dim: int = 64           # size of the class / text embedding
    text_layers: int = 1         # Transformer layers of the text encoder
    num_classes: int = 0         # set from the data for cond = class
    text_vocab: list = field(default_factory=list)   # set from the data for cond = text
    text_tokens: str = "words"    # how text_vocab reads: words | bpe (BPE merges)


def word_classes(cfg, weight: float) -> int:
    """Outputs of a caption-word classifier of this weight: one per token id of the caption vocabulary, or 0
    (no classifier) when the weight is 0 or the model has no captions."""
    return len(caption_vocab(cfg)) if weight > 0 and cfg.cond == "text" else 0


def base_size(size: int) -> int:
    """The smallest feature map of the DCGAN nets: 28 -> 7, 16, 32 and 64 -> 4."""
    if size == 28:
        return 7
    if size in (16, 32, 64):
        return 4
    raise ValueError(f"the dcgan architecture makes 16, 28, 32 or 64 px images, not {size} px; "
                     f"resize with --set image_size=32 (or use arch = \"mlp\")")


class Condition(nn.Module):
    """Class label -> embedding, or caption word ids -> text-encoder embedding; `dim` wide."""

    def __init__(self, cfg: GANConfig, dim: int):
        super().__init__()
        if cfg.cond == "class":
            self.net = nn.Embedding(cfg.num_classes, dim)
        else:
            self.net = caption_encoder(cfg, dim)

    def forward(self, y):
        return self.net(y)


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig, shape: tuple[int, int, int]):
        super().__init__()
        self.cfg, self.shape = cfg, shape
        c, h, w = shape
        self.cond = Condition(cfg, cfg.cond_dim) if cfg.cond != "none" else None
        zin = cfg.z_dim + (cfg.cond_dim if self.cond is not None else 0)
        if cfg.arch == "mlp":
            dims = [zin] + [cfg.hidden] * cfg.layers
            mods = []
            for a, b in zip(dims, dims[1:]):
                mods += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
            self.net = nn.Sequential(*mods, nn.Linear(dims[-1], c * h * w), nn.Tanh())
        else:
            b = base_size(h)
            n_up = int(round(math.log2(h // b)))
            chans = [cfg.g_width * 2 ** (n_up - 1 - i) for i in range(n_up)]     # e.g. 128, 64 for 28 px
            self.fc = nn.Sequential(nn.Linear(zin, chans[0] * b * b, bias=False))
            self.fc_norm = nn.Sequential(nn.BatchNorm2d(chans[0]), nn.ReLU(True))

            def extra(a):                                      # g_convs 3x3 convolutions at a resolution
                return [m for _ in range(cfg.g_convs)
                        for m in (nn.Conv2d(a, a, 3, 1, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU(True))]

            mods = []
            for a, o in zip(chans, chans[1:]):
                mods += extra(a) + [nn.ConvTranspose2d(a, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(True)]
            mods += extra(chans[-1]) + [nn.ConvTranspose2d(chans[-1], c, 4, 2, 1), nn.Tanh()]
            self.net = nn.Sequential(*mods)
            self.base, self.c0 = b, chans[0]

    def forward(self, z: torch.Tensor, y=None) -> torch.Tensor:
        """z: (B, z_dim), y: labels (B,) or word ids (B, L) when conditional -> images (B, C, H, W) in [-1, 1]."""
        if self.cond is not None:
            z = torch.cat([z, self.cond(y)], 1)
        if self.cfg.arch == "mlp":
            return self.net(z).view(-1, *self.shape)
        h = self.fc(z).view(-1, self.c0, self.base, self.base)
        return self.net(self.fc_norm(h))


class SumPool(nn.Module):
    """(..., H, W) -> (...): each channel summed over the feature map (the global sum pooling of SNGAN's ResNet
    discriminator); a clip's (B, C, T, H, W) keeps its frames."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.sum((-2, -1))


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig, shape: tuple[int, int, int]):
        super().__init__()
        self.cfg = cfg
        c, h, w = shape
        sn = spectral_norm if cfg.spectral_norm else (lambda m: m)
        if cfg.arch == "mlp":
            dims = [c * h * w] + [cfg.hidden] * cfg.layers
            mods = [nn.Flatten()]
            for a, b in zip(dims, dims[1:]):
                mods += [sn(nn.Linear(a, b)), nn.LeakyReLU(0.2)]
            feat = dims[-1]
        else:
            b = base_size(h)
            n_down = int(round(math.log2(h // b)))
            chans = [c] + [cfg.d_width * 2 ** i for i in range(n_down)]
            bn = cfg.d_batchnorm and not cfg.spectral_norm

            def layer(a, o, k, stride, norm):                 # 4x4 stride 2 or 3x3 stride 1: padding 1 for both
                return [sn(nn.Conv2d(a, o, k, stride, 1, bias=not norm)),
                        *([nn.BatchNorm2d(o)] if norm else []), nn.LeakyReLU(0.2, True)]

            mods = []
            for i, (a, o) in enumerate(zip(chans, chans[1:])):
                mods += layer(a, o, 4, 2, i > 0 and bn)
                for _ in range(cfg.d_convs):
                    mods += layer(o, o, 3, 1, bn)
            mods.append(SumPool() if cfg.d_pool else nn.Flatten())
            feat = chans[-1] * (1 if cfg.d_pool else b * b)
        self.features = nn.Sequential(*mods)
        self.out = sn(nn.Linear(feat, 1))
        self.cond = None
        if cfg.cond != "none":                       # projection: <e(y), phi(x)>
            self.cond = Condition(cfg, cfg.cond_dim)
            self.proj = sn(nn.Linear(cfg.cond_dim, feat, bias=False))
        words = word_classes(cfg, cfg.aux_words)
        self.classify = nn.Linear(feat, words) if words else None

    def forward(self, x: torch.Tensor, y=None):
        """x: images in [-1, 1] -> logits (B,), or (logits, word logits (B, vocabulary)) with `aux_words`."""
        h = self.features(x)
        out = self.out(h).squeeze(1)
        if self.cond is not None:
            out = out + (self.proj(self.cond(y)) * h).sum(1)
        return out if self.classify is None else (out, self.classify(h))
