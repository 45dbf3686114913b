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
  Both logits enter the losses, the difference term weighted by `frame_diff`. The other reading of the
  material's "frame difference loss" is `frame_diff_mode = "moments"`: no network, G's loss gets the L1
  distance between the mean absolute frame difference of its clips and of the real batch, per frame pair.

The stabilised recipe (issue 37; measured in docs/video.md) adds, as the anchors do:
- `g_arch = "motion"`: a content code (z and the caption) fixed over the clip and a motion code per frame from
  a GRU started from it (MoCoGAN, Tulyakov et al. 2018); each frame's codes -> a 4x4 map, so the latent has the
  clip's full frame rate and the 3D transposed convolutions upsample space only, their 3-frame kernels mixing
  neighbouring frames (`g_frame_kernel`; 1 makes each frame alone, MoCoGAN's 2D image generator). `g_coords`
  adds the (x, y) coordinates as two input channels of every upsampling layer (CoordConv, Liu et al. 2018), so
  that where a shape is drawn is a function G can compute.
- `g_arch = "sprite"`: what and where drawn apart (SpriteVideoGenerator): one sprite per clip from z and the caption
  by 2D transposed convolutions, and per-frame where-maps from the motion generator's 3D transposed convolutions;
  each frame is the sprite convolved with its map (VGAN's two streams, with the foreground's look fixed over the
  clip and its motion a translation).
- `aux_words`: the clip discriminator also names the caption's words from the clip (a multi-label classifier
  on its features, trained on real clips; G is trained to make its clips read as their captions): the
  auxiliary classifier of AC-GAN (Odena et al. 2017) with words for classes, as TAC-GAN (Dash et al. 2017)
  does for text. Projection alone lets G ignore the caption for thousands of steps; a classifier's
  gradient names the missing attribute directly. Direction is a word too, read by a 3D network.
- `g_cbn`: every BatchNorm of G takes its gain and bias from z and the caption embedding (conditional batch
  norm, de Vries et al. 2017; BigGAN, Brock et al. 2019), so the caption reaches every layer, not only the input.
- `image_d`: an image discriminator on `image_frames` random frames of each clip (MoCoGAN's D_I, DVD-GAN's
  spatial discriminator, Clark et al. 2019): the image GAN's projection discriminator (models/gan.py), which
  keeps each frame a sharp shape of the caption's color and kind while the clip discriminators judge motion.
- `image_d_pool`, `d_pool`: the image and the clip discriminators read their last feature map summed over space
  (SNGAN's and BigGAN's global pooling) instead of flattened: a flattened map gives each 8 x 8 px cell its own
  weights, so a shape that may be anywhere has to be learned in every cell (docs/gan.md: off the built-in shapes'
  grid, the image GAN's D read the shape word 0.42 flattened and 0.64 pooled).
- `image_words`: the image discriminator's own caption-word classifier (the image GAN's `aux_words`), which reads
  the words off whole frames at full resolution, where the shape is (docs/video.md).
- `crop_d`: an object discriminator on a `crop_px` window of the same frames, centred on the box of the frame's
  bright pixels (`object_windows`, the same rule for real and generated frames): the object discriminator of
  layout-to-image GANs (Zhao et al. 2019, Layout2Im; Sun & Wu 2019, LostGAN), which judge each object on a crop of
  its box, with the box read off the pixels here. Aligned on its box, a shape is judged as the image GAN's D
  judges the built-in shapes on their grid; `crop_words` gives it a word classifier too.
- `d_subpixel`: every clip, real or generated, is moved by a random fraction of a pixel before the
  discriminators (`subpixel_shift`, DiffAugment's translation, Zhao et al. 2020, kept under a pixel). The real
  shapes sit on whole pixels and a sprite drawn between pixels is blurred, so without it sharpness tells real from
  generated and the discriminators hold the sprite on whole pixels, which a speed under 1 px a frame cannot keep.
- `mismatch`: the matching-aware discriminator (GAN-CLS, Reed et al. 2016): D also sees real clips with another
  clip's caption (the batch's captions rolled by one) and learns to read them as fake, so a clip that moves the
  wrong way for its caption is fake to D even when it looks real (recipes/gan.py; the image GAN has it too).
  `mismatch_words`: those captions are near misses, each wrong in one word (a word of the rolled caption put in
  its place), so the pairs that differ only in direction are not a sixteenth of them.
The word classifiers need captions (cond = "text"); without them they are off."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from aigc.data.video import reflect
from aigc.models.gan import Discriminator, GANConfig, SumPool, word_classes
from aigc.models.text_encoder import caption_encoder


@dataclass
class VideoGANConfig:
    z_dim: int = 128
    g_width: int = 32            # channels of G's last hidden layer (doubled towards the input)
    d_width: int = 32            # channels of D's first layer (doubled at each downsampling)
    d_pool: bool = False         # the clip discriminators read their last map summed over space (per frame left)
    loss: str = "hinge"          # ns | minimax | hinge (recipes/gan.py)
    spectral_norm: bool = True   # spectral normalisation of both discriminators
    r1: float = 0.0              # R1 penalty on real clips (0 = off)
    r1_every: int = 1
    lr_g: float = 0.0            # TTUR (0 = train.lr)
    lr_d: float = 0.0
    d_steps: int = 1
    frame_diff: float = 1.0      # weight of the frame-difference term (0 = none)
    frame_diff_mode: str = "d"   # d (a discriminator on frame differences) | moments (G matches their size)
    g_arch: str = "tgan"         # tgan (T/8 latent frames) | motion (content + per-frame motion) | sprite
    motion_dim: int = 32         # motion: size of the per-frame motion code
    g_frame_kernel: int = 3      # motion: frames each upsampling layer mixes (odd; 1 = a 2D image generator per frame)
    sprite_px: int = 16          # sprite: side of the sprite's canvas (8, 16, 32 ...)
    sprite_where: str = "map"    # sprite: map (3D-conv where-maps, a softmax per frame) | point (an (x, y) per frame)
    #                              | line (a start and a velocity per clip) | argmax, argmax_line (maps read as points)
    g_coords: bool = False       # coordinate channels at G's upsampling layers
    g_cbn: bool = False          # G's BatchNorm gains and biases made from z and the caption (conditional BN)
    image_d: float = 0.0         # weight of the per-frame image discriminator (0 = no such network)
    image_frames: int = 4        # frames of each clip the image discriminator sees
    image_d_width: int = 0       # channels of the image discriminator's first layer (0 = d_width)
    image_d_convs: int = 0       # extra 3x3 convolutions per resolution in the image discriminator (the image GAN's)
    image_d_pool: bool = False   # the image discriminator reads its features summed over space (the GAN's d_pool)
    crop_d: float = 0.0          # weight of the object discriminator on windows centred on frames' shapes (0 = off)
    crop_px: int = 16            # side of those windows (16 or 32)
    crop_words: float = 0.0      # weight of the object discriminator's caption-word classifier (0 = off)
    d_subpixel: bool = False     # every clip moved by a random fraction of a pixel before the discriminators
    mode_seeking: float = 0.0    # weight of the mode-seeking term in G's loss (Mao et al. 2019; 0 = off)
    mode_seeking_pool: int = 1   # the term's distance on frames average-pooled by this factor (1 = pixels)
    mismatch: float = 0.0        # weight of D's loss on real inputs shown with another's condition (0 = off)
    mismatch_words: bool = False  # those conditions differ in one word: a word of the rolled caption put in its place
    aux_words: float = 0.0       # weight of the clip discriminator's caption-word classifier (AC-GAN; 0 = off)
    image_words: float = 0.0     # weight of the image discriminator's caption-word classifier (0 = off)
    words_fake: bool = False     # the word classifiers also learn that generated clips and frames show no word
    collapse_every: int = 250    # steps between the collapse detector's checks of sample diversity (0 = off)
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


class Coords(nn.Module):
    """(B, C, T, H, W) -> (B, C + 2, T, H, W): x and y in [-1, 1] appended as channels (CoordConv)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, _, t, hh, ww = h.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, hh, device=h.device, dtype=h.dtype),
                                torch.linspace(-1, 1, ww, device=h.device, dtype=h.dtype), indexing="ij")
        return torch.cat([h, torch.stack([xs, ys])[None, :, None].expand(b, 2, t, hh, ww)], 1)


class CondBatchNorm3d(nn.Module):
    """BatchNorm without its own affine part; gain 1 + g(c) and bias b(c) from a condition vector c."""

    def __init__(self, channels: int, cond: int):
        super().__init__()
        self.bn = nn.BatchNorm3d(channels, affine=False)
        self.gain, self.bias = nn.Linear(cond, channels), nn.Linear(cond, channels)
        for lin in (self.gain, self.bias):
            nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shape = (len(c), -1, 1, 1, 1)
        return self.bn(h) * (1 + self.gain(c).view(shape)) + self.bias(c).view(shape)


def motion_codes(h0: nn.Linear, gru: nn.GRUCell, z: torch.Tensor, frames: int) -> torch.Tensor:
    """MoCoGAN's codes: z (B, Z) -> (B, frames, Z + motion_dim), the content z beside each frame's motion code, a
    GRU's state started from h0(z), each frame's from the one before."""
    m, steps = torch.tanh(h0(z)), []
    for _ in range(frames):
        steps.append(m)
        m = gru(torch.zeros_like(m), m)
    return torch.cat([z[:, None].expand(-1, frames, -1), torch.stack(steps, 1)], 2)


class VideoGenerator(nn.Module):
    """z (and the caption) -> clip. g_arch "tgan": one code -> a (c0, T0, 4, 4) map, T doubled by the first
    layers; "motion": a content code and a GRU's motion code per frame -> a (c0, T, 4, 4) map (MoCoGAN)."""

    def __init__(self, cfg: VideoGANConfig, shape: tuple[int, int, int, int]):
        super().__init__()
        c, t, h, _ = shape
        self.cfg, self.shape = cfg, shape
        n_s = spatial_doublings(h)
        n_t = temporal_doublings(t, n_s) if cfg.g_arch == "tgan" else 0
        self.t0 = t // 2 ** n_t
        chans = [cfg.g_width * 2 ** (n_s - 1 - i) for i in range(n_s)]
        self.text = caption_encoder(cfg, cfg.cond_dim) if cfg.cond == "text" else None
        zin = cfg.z_dim + (cfg.cond_dim if self.text is not None else 0)
        self.c0 = chans[0]
        if cfg.g_arch == "motion":
            self.h0 = nn.Linear(zin, cfg.motion_dim)
            self.gru = nn.GRUCell(cfg.motion_dim, cfg.motion_dim)
            self.fc = nn.Linear(zin + cfg.motion_dim, self.c0 * 16, bias=False)
        else:
            self.fc = nn.Linear(zin, self.c0 * self.t0 * 16, bias=False)
        norm = (lambda ch: CondBatchNorm3d(ch, zin)) if cfg.g_cbn else nn.BatchNorm3d
        self.fc_norm = nn.Sequential(norm(self.c0), nn.ReLU(True))
        mods = []
        for i, (a, o) in enumerate(zip(chans, chans[1:] + [c])):      # double H, W (and T while i < n_t)
            kt = cfg.g_frame_kernel
            k, s, p = ((4, 4, 4), (2, 2, 2), 1) if i < n_t else ((kt, 4, 4), (1, 2, 2), (kt // 2, 1, 1))
            last = i == len(chans) - 1
            mods += [*([Coords()] if cfg.g_coords else []), nn.ConvTranspose3d(a + 2 * cfg.g_coords, o, k, s, p,
                                                                               bias=last)]
            if not last:
                mods += [norm(o), nn.ReLU(True)]
        self.net = nn.Sequential(*mods, nn.Tanh())

    def forward(self, z: torch.Tensor, y=None) -> torch.Tensor:
        """z (B, z_dim), y word ids (B, L) -> clips (B, C, T, H, W) in [-1, 1]."""
        if self.text is not None:
            z = torch.cat([z, self.text(y)], 1)
        if self.cfg.g_arch == "motion":
            per_frame = motion_codes(self.h0, self.gru, z, self.t0)
            h = self.fc(per_frame).view(len(z), self.t0, self.c0, 4, 4).transpose(1, 2)
        else:
            h = self.fc(z).view(-1, self.c0, self.t0, 4, 4)
        if not self.cfg.g_cbn:
            return self.net(self.fc_norm(h))
        for m in (*self.fc_norm, *self.net):
            h = m(h, z) if isinstance(m, CondBatchNorm3d) else m(h)
        return h


class SpriteVideoGenerator(nn.Module):
    """g_arch "sprite": what and where drawn apart. The sprite (what: the caption's shape in its color) is one
    small image per clip, made from z and the caption by 2D transposed convolutions at a fixed place in its own
    `sprite_px` canvas, so its edges never have to fall between G's coarse cells; the where-maps come from the
    motion generator above (3D transposed convolutions, content and per-frame motion codes, MoCoGAN), one channel
    per frame made into a distribution over the frame's pixels by a softmax. Each frame is the sprite convolved
    with its map: a peaked map puts the same crisp sprite at one pixel in every frame. This is the two streams of
    VGAN (Vondrick et al. 2016: a moving foreground with a mask over a static background) with the foreground's
    appearance fixed over the clip and its motion made a translation. `sprite_where = "point"` replaces the where-
    maps by one (x, y) per frame from the content and motion codes (no convolutions), drawn bilinearly (`splat`): a
    map that is one point by construction, and kept where the whole canvas is inside the frame (a shape half out of
    the frame is what G drew to escape the object discriminator, docs/video.md). `sprite_where = "argmax"` keeps
    the 3D-conv where-maps and draws each frame's sprite at its map's expected position (the spatial soft-argmax of
    Finn et al. 2016, "Deep spatial autoencoders"), scaled to where the whole canvas is in the frame: a point
    again, made by 3D convolutions; `"argmax_line"` draws the sprite on the least-squares line through those
    points (constant velocity, as `line`, with the trajectory read off 3D-conv where-maps). `sprite_where =
    "line"` makes a start and a velocity per clip from the content code: the point moves in a straight line at
    constant speed, as the moving-shapes do. All but `map` fold their points into the frame by reflection
    (`reflect`: a point that runs past an edge comes back, as the data's shapes bounce)."""

    SHARPNESS = 12.0          # the where-logits are SHARPNESS * tanh(.): a peak up to e^24 over any other pixel

    def __init__(self, cfg: VideoGANConfig, shape: tuple[int, int, int, int]):
        super().__init__()
        c, t, h, w = shape
        self.cfg, self.shape, self.px = cfg, shape, cfg.sprite_px
        n = spatial_doublings(self.px)
        self.text = caption_encoder(cfg, cfg.cond_dim) if cfg.cond == "text" else None
        zin = cfg.z_dim + (cfg.cond_dim if self.text is not None else 0)
        if cfg.sprite_where == "point":
            self.h0, self.gru = nn.Linear(zin, cfg.motion_dim), nn.GRUCell(cfg.motion_dim, cfg.motion_dim)
            self.point = nn.Linear(zin + cfg.motion_dim, 2)
        elif cfg.sprite_where == "line":
            self.line = nn.Sequential(nn.Linear(zin, cfg.motion_dim), nn.ReLU(True), nn.Linear(cfg.motion_dim, 4))
        else:
            self.where = VideoGenerator(replace(cfg, g_arch="motion"), (1, t, h, w))
        chans = [cfg.g_width * 2 ** (n - 1 - i) for i in range(n)]
        mods = [nn.Linear(zin, chans[0] * 16, bias=False), nn.Unflatten(1, (chans[0], 4, 4)),
                nn.BatchNorm2d(chans[0]), nn.ReLU(True)]
        for i, (a, o) in enumerate(zip(chans, chans[1:] + [c])):
            last = i == n - 1
            mods += [nn.ConvTranspose2d(a, o, 4, 2, 1, bias=last)]
            mods += [nn.Sigmoid()] if last else [nn.BatchNorm2d(o), nn.ReLU(True)]
        self.sprite = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor, y=None) -> torch.Tensor:
        """z (B, z_dim), y word ids (B, L) -> clips (B, C, T, H, W) in [-1, 1]."""
        b, (_, t, h, w) = len(z), self.shape
        zc = torch.cat([z, self.text(y)], 1) if self.text is not None else z
        span = z.new_tensor([w - self.px, h - self.px])     # where a point keeps the whole canvas in the frame
        if self.cfg.sprite_where == "point":
            u = span * (0.5 + self.point(motion_codes(self.h0, self.gru, zc, t)))
        elif self.cfg.sprite_where == "line":               # a start and a velocity per clip
            p0, v = self.line(zc).view(b, 1, 2, 2).unbind(2)
            u = span * (0.5 + p0) + v * torch.arange(t, dtype=z.dtype, device=z.device)[None, :, None]
        else:
            logits = self.where(z, y)[:, 0] * self.SHARPNESS                 # (B, T, H, W)
            maps = logits.flatten(2).softmax(-1).view(b, t, h, w)
            if self.cfg.sprite_where == "map":
                return place(maps, self.sprite(zc)) * 2 - 1
            at = lambda n: torch.linspace(0, 1, n, dtype=maps.dtype, device=maps.device)   # noqa: E731
            xy = torch.stack([(maps.sum(2) * at(w)).sum(-1), (maps.sum(3) * at(h)).sum(-1)], -1)   # the maps' mean
            if self.cfg.sprite_where == "argmax_line":                     # the least-squares line through them
                s = (torch.arange(t, dtype=xy.dtype, device=xy.device) - (t - 1) / 2)[None, :, None]
                xy = xy.mean(1, keepdim=True) + s * (s * xy).sum(1, keepdim=True) / (s * s).sum()
            u = xy * span
        maps = splat(reflect(u, span) + sprite_anchor(self.px), h, w)       # (x, y) per frame, folded into the frame
        return place(maps, self.sprite(zc)) * 2 - 1


def splat(xy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Points (B, T, 2) as (x, y) in pixels -> maps (B, T, H, W) holding each point's bilinear weights on the four
    pixels around it (1 on one pixel at whole coordinates)."""
    axes = []
    for p, n in ((xy[..., 1], h), (xy[..., 0], w)):
        p = p.clamp(0, n - 1)
        i = p.detach().floor().long().clamp(max=n - 2)
        f = (p - i)[..., None]
        axes.append(F.one_hot(i, n) * (1 - f) + F.one_hot(i + 1, n) * f)
    return axes[0][..., :, None] * axes[1][..., None, :]


def sprite_anchor(k: int) -> int:
    """The pixel of a k x k sprite that `place` puts on a map's point (k/2 - 1, along each axis)."""
    return k // 2 - 1


def place(maps: torch.Tensor, sprite: torch.Tensor) -> torch.Tensor:
    """maps (B, T, H, W), sprites (B, C, k, k) -> (B, C, T, H, W): every frame's map convolved with its clip's
    sprite (sprite pixel (k/2 - 1, k/2 - 1) lands on a map's pixel), by FFT: for 32 clips of 16 frames and 16 px
    sprites, forward and backward took 0.07 s on 2 cores, a grouped transposed convolution 12.7 s. An FFT side
    n >= H + k/2 keeps the circular convolution's wrap-around out of the frame."""
    h, w = maps.shape[-2:]
    k = sprite.shape[-1]
    o, n = sprite_anchor(k), (max(h, w) + k // 2 + 1)
    spec = torch.fft.rfft2(maps, s=(n, n))[:, None] * torch.fft.rfft2(sprite, s=(n, n))[:, :, None]
    return torch.fft.irfft2(spec, s=(n, n))[..., o:o + h, o:o + w]


def video_generator(cfg: VideoGANConfig, shape: tuple[int, int, int, int]) -> nn.Module:
    """G for `g_arch`: the sprite generator, or VideoGenerator (tgan, motion)."""
    return SpriteVideoGenerator(cfg, shape) if cfg.g_arch == "sprite" else VideoGenerator(cfg, shape)


class ClipDiscriminator(nn.Module):
    """Stride-2 Conv3d layers down to 4x4 pixels -> logit (+ caption projection); with `words` > 0 also logits
    over the caption vocabulary (`classify`). With `d_pool` the heads read the last map summed over space."""

    def __init__(self, cfg: VideoGANConfig, shape: tuple[int, int, int, int], words: int = 0):
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
        self.features = nn.Sequential(*mods, *([SumPool()] if cfg.d_pool else []), nn.Flatten())
        with torch.no_grad():
            feat = self.features(torch.zeros(1, *shape)).shape[1]
        self.out = sn(nn.Linear(feat, 1))
        self.text = None
        if cfg.cond == "text":
            self.text = caption_encoder(cfg, cfg.cond_dim)
            self.proj = sn(nn.Linear(cfg.cond_dim, feat, bias=False))
        self.classify = nn.Linear(feat, words) if words else None

    def forward(self, x: torch.Tensor, y=None):
        """-> logits (B,), or (logits, word logits (B, words)) with a classifier."""
        h = self.features(x)
        out = self.out(h).squeeze(1)
        if self.text is not None:
            out = out + (self.proj(self.text(y)) * h).sum(1)
        return out if self.classify is None else (out, self.classify(h))


def frame_differences(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T-1, H, W): x[t+1] - x[t]."""
    return x[:, :, 1:] - x[:, :, :-1]


def image_discriminator(cfg: VideoGANConfig, shape: tuple[int, int, int]) -> Discriminator:
    """The image GAN's DCGAN projection discriminator with the video GAN's norm and caption encoder, `image_d_width`
    wide (d_width by default) with `image_d_convs` extra convolutions per resolution, pooled with `image_d_pool`."""
    return Discriminator(GANConfig(arch="dcgan", d_width=cfg.image_d_width or cfg.d_width, d_convs=cfg.image_d_convs,
                                   d_pool=cfg.image_d_pool, spectral_norm=cfg.spectral_norm, aux_words=cfg.image_words,
                                   cond="text" if cfg.cond == "text" else "none", cond_dim=cfg.cond_dim,
                                   text_layers=cfg.text_layers, text_vocab=cfg.text_vocab,
                                   text_tokens=cfg.text_tokens), shape)


def some_frames(x: torch.Tensor, k: int, generator=None) -> torch.Tensor:
    """(B, C, T, H, W) -> (B * k, C, H, W): k frames of each clip drawn without replacement, clip by clip."""
    b, c, t, h, w = x.shape
    pick = torch.rand(b, t, generator=generator).argsort(1)[:, :k].to(x.device)
    return x.transpose(1, 2)[torch.arange(b, device=x.device)[:, None], pick].reshape(b * k, c, h, w)


def object_windows(frames: torch.Tensor, side: int, threshold: float = -0.2) -> torch.Tensor:
    """frames (N, C, H, W) in [-1, 1] -> (N, C, side, side): the window centred on the bounding box of the pixels
    whose brightest channel exceeds `threshold` (-0.2: the detector's 100 of 255), padded with -1 (black) at the
    frame's edges; on the frame's centre where no pixel does. The window's place is read without gradient; its
    pixels carry it."""
    n, c, h, w = frames.shape
    with torch.no_grad():
        fore = frames.amax(1) > threshold
        centre = []
        for axis, size in ((fore.any(2), h), (fore.any(1), w)):               # rows, then columns
            idx = torch.arange(size, device=frames.device)
            lo = torch.where(axis, idx, size).min(1).values
            hi = torch.where(axis, idx, -1).max(1).values
            centre.append(torch.where(axis.any(1), torch.div(lo + hi + 1, 2, rounding_mode="floor"), size // 2))
    half = side // 2
    padded = F.pad(frames, (half, half, half, half), value=-1.0)
    ar = torch.arange(side, device=frames.device)
    rows, cols = centre[0][:, None] + ar, centre[1][:, None] + ar                 # padded coordinates of the window
    return padded[torch.arange(n, device=frames.device)[:, None, None, None], torch.arange(c, device=frames.device)
                  [None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def subpixel_shift(x: torch.Tensor) -> torch.Tensor:
    """Clips (B, C, T, H, W) in [-1, 1], each moved right and down by its own random (dx, dy) in [0, 1) px, the
    same for all its frames, by bilinear interpolation over a black (-1) border: DiffAugment's translation
    (Zhao et al. 2020) kept under a pixel. A shape on whole pixels comes out as blurred as one drawn between
    them, so sharpness no longer tells the discriminators real from generated; the motion is kept."""
    b = len(x)
    f = torch.rand(2, b, 1, 1, 1, 1, device=x.device, dtype=x.dtype)
    a = x + 1                                                             # black = 0, so zero padding is black
    right = F.pad(a, (1, 0))[..., :-1]
    a = (1 - f[0]) * a + f[0] * right
    down = F.pad(a, (0, 0, 1, 0))[..., :-1, :]
    return (1 - f[1]) * a + f[1] * down - 1


class VideoDiscriminator(nn.Module):
    """The clip discriminator and, by the config, the frame-difference discriminator and the per-frame
    image and object discriminators. forward -> {"clip": logits (B,), "diff": (B,)?, "image": (B * image_frames,)?,
    "crop": (B * image_frames,)?, "words": the clip discriminator's word logits (B, vocabulary)?, "image_words",
    "crop_words": the image and object discriminators' (B * image_frames, vocabulary)?}."""

    def __init__(self, cfg: VideoGANConfig, shape: tuple[int, int, int, int]):
        super().__init__()
        c, t, h, w = shape
        self.cfg = cfg
        words = word_classes(cfg, cfg.aux_words)
        self.clip = ClipDiscriminator(cfg, shape, words)
        self.diff = ClipDiscriminator(cfg, (c, t - 1, h, w)) if cfg.frame_diff > 0 and cfg.frame_diff_mode == "d" \
            else None
        self.image = image_discriminator(cfg, (c, h, w)) if cfg.image_d > 0 else None
        self.crop = image_discriminator(replace(cfg, image_d_pool=False, image_words=cfg.crop_words),
                                        (c, cfg.crop_px, cfg.crop_px)) if cfg.crop_d > 0 else None

    def forward(self, x: torch.Tensor, y=None) -> dict[str, torch.Tensor]:
        if self.cfg.d_subpixel and self.training:
            x = subpixel_shift(x)
        out = {"clip": self.clip(x, y)}
        if isinstance(out["clip"], tuple):
            out["clip"], out["words"] = out["clip"]
        if self.diff is not None:
            out["diff"] = self.diff(frame_differences(x), y)
        if self.image is not None or self.crop is not None:
            k = min(self.cfg.image_frames, x.shape[2])
            frames, yk = some_frames(x, k), None if y is None else y.repeat_interleave(k, 0)
            for name, net in (("image", self.image), ("crop", self.crop)):
                if net is not None:
                    out[name] = net(frames if name == "image" else object_windows(frames, self.cfg.crop_px), yk)
                    if isinstance(out[name], tuple):
                        out[name], out[f"{name}_words"] = out[name]
        return out
