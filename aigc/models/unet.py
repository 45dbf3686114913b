"""The diffusion denoiser: a U-Net eps_theta(x_t, t, c) in the style of DDPM (Ho et al. 2020) and its
improved versions (Nichol & Dhariwal 2021), sized for 28/32/64 px images on a CPU.

- time: sinusoidal embedding of t (Transformer positions, Vaswani et al. 2017) -> 2-layer MLP;
- condition: a class embedding (index `num_classes` = the learned empty condition) or the pooled
  output of the caption encoder (models/text_encoder.py, whose null embedding is the empty caption),
  projected and added to the time embedding (one vector holds a short caption from a closed vocabulary,
  at no cost per pixel; cross-attention pays off for long captions of several objects);
- residual blocks: GroupNorm -> SiLU -> 3x3 conv, the embedding applied as a scale and shift of the
  second GroupNorm ("scale-shift norm", Nichol & Dhariwal 2021), dropout, 3x3 conv, plus a 1x1 skip;
- self-attention blocks at the lowest `attn_levels` resolutions, and in the middle;
- down-sampling by stride-2 convolutions, up-sampling by nearest-neighbour x2 + conv, skip connections
  from every down block to its mirror block;
- `patch`: space-to-depth, the U-Net runs at size/patch with C*patch^2 channels;
- `coords`: two input channels holding each pixel's x and y in [-1, 1] (CoordConv, Liu et al. 2018);
- `cond_map`: the condition embedding projected by a Linear layer to that many channels at the working
  resolution and appended to the input. Convolutions are translation-equivariant and a pooled condition
  only scales and shifts whole channels, so it has no direct way to say "in the top left"; the map (and
  the coordinates) give it one.

Video (`frames` > 0, the video-diffusion family; VideoUNetConfig): the same U-Net runs on every frame as a
batch of images (B*T, C, H, W), and each block adds the temporal half of a factorised (2+1)D layer (Tran et
al. 2018, as in Video Diffusion Models, Ho et al. 2022): a residual 1D convolution over the frames at every
pixel and, where the block has spatial self-attention, attention across the frames at every pixel. A
sinusoidal frame-index embedding is added to each frame's time embedding. Clips are (B, C, T, H, W).
- `temporal_conv = "separated"`: a channel-separated 3D convolution (Tran et al. 2019), a depthwise 3x3x3
  kernel per channel then a 1x1x1 mix; a channel can be a filter tilted in space-time ("the same thing one
  pixel further in the next frame"), which the per-pixel 1D kernel cannot be;
- `temporal_conv = "dynamic"`: the 1D convolution plus a depthwise 3x3x3 branch whose kernels each clip gets
  from its embedding (noise level and caption; dynamic filters, Jia et al. 2016), so the caption can tilt
  the space-time filters itself;
- `frame_map`: the caption map (`cond_map`) differs per frame: the caption embedding plus a frame-index
  embedding through a SiLU, then the map's Linear;
- `temporal_pos = "relative"`: a learned bias per frame offset in the temporal attention;
- `spacetime_attention = "all"` ("mid": the middle block's only): the spatial attention blocks attend over
  every pixel of every frame of a clip at once, relating any two places in any two frames in one layer.
Measurements of these options: docs/video.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc.models.text_encoder import caption_encoder


@dataclass
class UNetConfig:
    """The denoising network and its condition input."""
    width: int = 32                  # channels at full resolution
    mults: list = field(default_factory=lambda: [1, 2, 2])   # channel multiplier per resolution level
    blocks: int = 1                  # residual blocks per level (down path; the up path has blocks + 1)
    attn_levels: int = 1             # self-attention in the lowest N levels (0 = middle block only)
    patch: int = 1                   # space-to-depth factor: the U-Net runs at size/patch with C*patch^2 channels
    coords: bool = False             # append x, y coordinate channels to the input (CoordConv)
    cond_map: int = 0                # channels of a spatial map computed from the condition, appended to the input
    heads: int = 4
    groups: int = 8                  # GroupNorm groups
    dropout: float = 0.0
    cond: str = "none"               # none | class | text
    cond_dim: int = 64               # caption encoder width
    text_layers: int = 1
    num_classes: int = 0             # set from the data
    text_vocab: list = field(default_factory=list)   # set from the data
    text_tokens: str = "words"    # how text_vocab reads: words | bpe (BPE merges)


@dataclass
class VideoUNetConfig:
    """The temporal layers of the space-time U-Net (frames > 0)."""
    temporal_attention: bool = True  # attention across frames in the blocks that have spatial attention
    spacetime_attention: str = "none"  # none | mid | all: those attention blocks attend over all of a clip's pixels
    temporal_conv: str = "1d"        # 1d (per pixel) | separated (depthwise 3x3x3 + 1x1x1) | dynamic (1d + per-clip
                                     # depthwise 3x3x3 kernels made from the embedding)
    temporal_pos: str = "none"       # none | relative: a learned per-head bias for each frame offset
    frame_map: bool = False          # the caption map (cond_map) differs per frame


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): sin and cos of t / 10000^(2i/dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], 1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)            # each block starts as the identity (improved DDPM)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, 1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class Attention(nn.Module):
    """Residual self-attention over the pixels of each image of (N, C, H, W) features; for video with
    `spacetime`, over all the pixels of all the frames of each clip at once (frames * H * W tokens), so a
    token can find "the shape in frame 0" from "the shape in frame 5" wherever the motion took it."""

    def __init__(self, ch: int, heads: int, groups: int, spacetime: bool = False):
        super().__init__()
        self.heads, self.spacetime = heads, spacetime
        self.norm = nn.GroupNorm(min(groups, ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, frames: int = 0) -> torch.Tensor:
        N, C, H, W = x.shape
        f = frames if self.spacetime and frames else 1               # images attended to together
        qkv = self.qkv(self.norm(x)).reshape(N // f, f, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.permute(2, 0, 3, 1, 5, 4).flatten(3, 4).unbind(0)    # (N/f, heads, f*HW, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.reshape(N // f, self.heads, f, H * W, C // self.heads).permute(0, 2, 1, 4, 3).reshape(N, C, H, W)
        return x + self.out(h)


class TemporalConv(nn.Module):
    """Residual 1D convolution (kernel 3) over the frames at every pixel of (B*T, C, H, W) features; or, with
    `separated`, a channel-separated 3D convolution (Tran et al. 2019): a depthwise 3x3x3 convolution over
    (frames, height, width), then a 1x1x1 one mixing the channels. The per-pixel kernel cannot tilt in space:
    "the same thing one pixel further right in the next frame" needs several layers; each depthwise channel
    can be such a tilted (moving) filter, at less cost than the per-pixel kernel.
    `dynamic` = E > 0 adds to the 1D convolution a second branch whose depthwise 3x3x3 kernels are made for
    each clip from its embedding (E wide: the noise level and the caption) by a Linear layer, plus a learned
    base kernel, then a 1x1x1 mix (dynamic filters, Jia et al. 2016, who made video-prediction filters this
    way). A caption can then tilt the filters itself ("right": what is at x in frame t is at x + 1 in frame
    t + 1), a two-way link of word and kernel, where the channel scales can only pick among fixed kernels."""

    def __init__(self, ch: int, groups: int, separated: bool = False, dynamic: int = 0):
        super().__init__()
        if separated and dynamic:
            raise ValueError("a temporal convolution is separated or dynamic (1D plus a dynamic branch), not both")
        self.norm = nn.GroupNorm(min(groups, ch), ch)
        self.separated = separated
        if separated:
            self.depthwise = nn.Conv3d(ch, ch, 3, padding=1, groups=ch)
            self.conv = nn.Conv3d(ch, ch, 1)
        else:
            self.conv = nn.Conv1d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.kernels = None
        if dynamic:
            self.base = nn.Parameter(torch.randn(ch, 1, 3, 3, 3) / math.sqrt(27))
            self.kernels = nn.Linear(dynamic, ch * 27)          # the clip's embedding -> its depthwise kernels
            nn.init.normal_(self.kernels.weight, std=0.1 / math.sqrt(dynamic))
            nn.init.zeros_(self.kernels.bias)
            self.mix = nn.Conv3d(ch, ch, 1)
            nn.init.zeros_(self.mix.weight)
            nn.init.zeros_(self.mix.bias)

    def forward(self, x: torch.Tensor, frames: int, clip_emb: torch.Tensor | None = None) -> torch.Tensor:
        BT, C, H, W = x.shape
        B = BT // frames
        if self.separated:
            h = F.silu(self.norm(x)).view(B, frames, C, H, W).transpose(1, 2)
            h = self.conv(self.depthwise(h)).transpose(1, 2).reshape(BT, C, H, W)
            return x + h
        a = F.silu(self.norm(x))
        h = a.view(B, frames, C, H, W).permute(0, 3, 4, 2, 1).reshape(B * H * W, C, frames)
        h = self.conv(h).view(B, H, W, C, frames).permute(0, 4, 3, 1, 2).reshape(BT, C, H, W)
        if self.kernels is not None:
            if clip_emb is None:
                raise ValueError("a dynamic temporal convolution needs each clip's embedding")
            k = self.base + self.kernels(clip_emb).view(B, C, 1, 3, 3, 3)             # (B, C, 1, 3, 3, 3)
            v = depthwise_per_clip(a, k.view(B, C, 3, 3, 3), frames)
            h = h + F.conv2d(v, self.mix.weight.view(C, C, 1, 1), self.mix.bias)      # the 1x1x1 mix, per frame
        return x + h


def depthwise_per_clip(x: torch.Tensor, k: torch.Tensor, frames: int) -> torch.Tensor:
    """The depthwise 3x3x3 convolution (zero padding) of each clip of x = (B*T, C, H, W) features with its own
    kernels k = (B, C, 3, 3, 3) (frame, row, column offsets); returns (B*T, C, H, W). The same as F.conv3d with
    groups = B*C on the clips laid side by side, computed as three depthwise 2D convolutions, one per frame
    offset, with the frames as the batch: on CPU the grouped conv3d's backward pass is slow (18 ms against 5 ms
    forward and backward at the video preset's (8 clips, 32 channels, 8 x 16 x 16) shape, AMD EPYC, 2 threads)."""
    BT, C, H, W = x.shape
    B = BT // frames
    h = x.view(B, frames, C, H, W).transpose(0, 1).reshape(frames, B * C, H, W)
    zero = h.new_zeros(1, B * C, H, W)
    padded = torch.cat([zero, h, zero])                                    # padded[t + 1] = frame t
    k = k.reshape(B * C, 3, 3, 3)
    out = sum(F.conv2d(padded[d:d + frames], k[:, d:d + 1], padding=1, groups=B * C) for d in range(3))
    return out.view(frames, B, C, H, W).transpose(0, 1).reshape(BT, C, H, W)


class TemporalAttention(nn.Module):
    """Residual self-attention across the frames at every pixel of (B*T, C, H, W) features. Plain attention is
    blind to frame order (only the features' frame-index embedding tells frames apart); with `max_frames` > 0
    each head adds a learned bias per frame offset j - i to its logits (relative positions, as Video Diffusion
    Models do), so a head can look at "the previous frame" whatever the window's place in the clip."""

    def __init__(self, ch: int, heads: int, groups: int, max_frames: int = 0):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(min(groups, ch), ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.out = nn.Linear(ch, ch)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.rel = nn.Parameter(torch.zeros(heads, 2 * max_frames - 1)) if max_frames > 0 else None

    def bias(self, frames: int) -> torch.Tensor | None:
        """(heads, frames, frames): the learned bias of offset j - i, or None without relative positions."""
        if self.rel is None:
            return None
        middle = self.rel.shape[1] // 2
        if frames > middle + 1:
            raise ValueError(f"temporal attention has relative positions for up to {middle + 1} frames, got {frames}")
        i = torch.arange(frames, device=self.rel.device)
        return self.rel[:, middle + i[None, :] - i[:, None]]

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        BT, C, H, W = x.shape
        B, n = BT // frames, BT // frames * H * W
        h = self.norm(x).view(B, frames, C, H, W).permute(0, 3, 4, 1, 2).reshape(n, frames, C)
        q, k, v = self.qkv(h).view(n, frames, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.bias(frames)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
        a = a.transpose(1, 2).reshape(n, frames, C)
        a = self.out(a).view(B, H, W, frames, C).permute(0, 3, 4, 1, 2).reshape(BT, C, H, W)
        return x + a


class Block(nn.Module):
    """A residual block, optionally followed by self-attention; for video, each followed by its temporal
    counterpart (a temporal convolution, temporal attention)."""

    def __init__(self, cin, cout, emb, cfg: UNetConfig, attn: bool, frames: int = 0, mid: bool = False):
        super().__init__()
        video = frames > 0
        self.res = ResBlock(cin, cout, emb, cfg.groups, cfg.dropout)
        spacetime = video and cfg.spacetime_attention in (("mid", "all") if mid else ("all",))
        self.attn = Attention(cout, cfg.heads, cfg.groups, spacetime) if attn else None
        self.tconv = TemporalConv(cout, cfg.groups, cfg.temporal_conv == "separated",
                                  emb if cfg.temporal_conv == "dynamic" else 0) if video else None
        rel = frames if video and cfg.temporal_pos == "relative" else 0
        self.tattn = TemporalAttention(cout, cfg.heads, cfg.groups, rel) if video and attn and cfg.temporal_attention \
            else None

    def forward(self, x, emb, frames: int = 0, clip_emb=None):
        x = self.res(x, emb)
        if self.tconv is not None:
            x = self.tconv(x, frames, clip_emb)
        if self.attn is not None:
            x = self.attn(x, frames)
        if self.tattn is not None:
            x = self.tattn(x, frames)
        return x


def check_size(size: int, levels: int) -> None:
    if size % (2 ** (levels - 1)):
        raise ValueError(f"the U-Net halves the image {levels - 1} times, so its size must be divisible by "
                         f"{2 ** (levels - 1)}; got {size} px (use 28, 32 or 64, or change model.mults)")


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig, shape: tuple[int, int, int], frames: int = 0):
        """shape: one image's (C, H, W); frames > 0 makes it a video denoiser of (B, C, frames, H, W) clips."""
        super().__init__()
        C, H, _ = shape
        if H % cfg.patch:
            raise ValueError(f"model.patch = {cfg.patch} does not divide the image size {H}")
        check_size(H // cfg.patch, len(cfg.mults))
        C = C * cfg.patch ** 2
        c_in = C + (2 if cfg.coords else 0) + (cfg.cond_map if cfg.cond != "none" else 0)
        self.cfg = cfg
        ch, emb = cfg.width, 4 * cfg.width
        self.time = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.frames = frames
        video = frames > 0
        if video:
            self.frame_emb = nn.Linear(ch, emb)
            nn.init.zeros_(self.frame_emb.weight)
        if cfg.cond == "class":
            self.label = nn.Embedding(cfg.num_classes + 1, emb)      # the last index is the empty condition
        elif cfg.cond == "text":
            self.text = caption_encoder(cfg, cfg.cond_dim)
            self.text_proj = nn.Linear(cfg.cond_dim, emb)
        self.per_frame_map = video and cfg.cond != "none" and cfg.cond_map > 0 and cfg.frame_map
        if cfg.cond != "none" and cfg.cond_map:
            self.map_size = H // cfg.patch
            self.cond_to_map = nn.Linear(emb, cfg.cond_map * self.map_size ** 2)
            if self.per_frame_map:
                self.map_frame = nn.Linear(ch, emb)
                nn.init.zeros_(self.map_frame.weight)
        self.inp = nn.Conv2d(c_in, ch, 3, padding=1)
        levels = len(cfg.mults)
        attn_from = levels - cfg.attn_levels
        self.down = nn.ModuleList()
        skips, cur = [ch], ch
        for i, m in enumerate(cfg.mults):
            for _ in range(cfg.blocks):
                self.down.append(Block(cur, ch * m, emb, cfg, i >= attn_from, frames))
                cur = ch * m
                skips.append(cur)
            if i < levels - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid = nn.ModuleList([Block(cur, cur, emb, cfg, True, frames, mid=True),
                                  Block(cur, cur, emb, cfg, False, frames, mid=True)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(cfg.mults))):
            for _ in range(cfg.blocks + 1):
                self.up.append(Block(cur + skips.pop(), ch * m, emb, cfg, i >= attn_from, frames))
                cur = ch * m
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(cur, cur, 3, padding=1)))
        self.out = nn.Sequential(nn.GroupNorm(min(cfg.groups, cur), cur), nn.SiLU(), nn.Conv2d(cur, C, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def null_condition(self, n: int, device=None) -> torch.Tensor | None:
        """The empty condition for n samples: the null class index, or an all-padding caption."""
        if self.cfg.cond == "class":
            return torch.full((n,), self.cfg.num_classes, dtype=torch.long, device=device)
        if self.cfg.cond == "text":
            return torch.zeros(n, self.text.pos.shape[0], dtype=torch.long, device=device)
        return None

    def cond_embedding(self, c: torch.Tensor | None) -> torch.Tensor | None:
        if self.cfg.cond == "class":
            return self.label(c)
        if self.cfg.cond == "text":
            return self.text_proj(self.text(c))
        return None

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None,
                frame_index: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), or (B, C, T, H, W) clips for a video U-Net; t (B,); c the condition or None;
        frame_index (B, T): each frame's index in its clip, for windows cut from longer clips (default 0..T-1)."""
        emb = self.time(timestep_embedding(t, self.cfg.width))
        cmap = None
        m = self.cfg.cond_map
        if self.cfg.cond != "none":
            ce = self.cond_embedding(c)
            emb = emb + ce
            if m and not self.per_frame_map:
                cmap = self.cond_to_map(ce).view(len(ce), m, self.map_size, self.map_size)
        frames, clip_emb = 0, emb                                      # clip_emb (B, E): time + condition
        if self.frames:
            B, _, frames = x.shape[:3]
            x = x.transpose(1, 2).flatten(0, 1)                        # every frame an image: (B*T, C, H, W)
            idx = torch.arange(frames, device=x.device) if frame_index is None else frame_index.to(x.device)
            sin = timestep_embedding(idx.flatten(), self.cfg.width)
            pos = self.frame_emb(sin).view(*idx.shape, -1)
            emb = (emb[:, None] + pos).flatten(0, 1)                   # pos (T, E) or (B, T, E)
            if cmap is not None:
                cmap = cmap.repeat_interleave(frames, 0)
            elif self.per_frame_map:                                   # frame_map: (B, T, E) -> one map per frame
                hidden = F.silu(ce[:, None] + self.map_frame(sin).view(*idx.shape, -1))
                cmap = self.cond_to_map(hidden).view(B * frames, m, self.map_size, self.map_size)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.cfg.patch > 1:
            x = F.pixel_unshuffle(x, self.cfg.patch)
        if self.cfg.coords:
            B, _, h, w = x.shape
            ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(B, 1, h, w)
            xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(B, 1, h, w)
            x = torch.cat([x, xs, ys], 1)
        if cmap is not None:
            x = torch.cat([x, cmap.to(x.dtype)], 1)
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb, frames, clip_emb) if isinstance(layer, Block) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb, frames, clip_emb)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], 1), emb, frames, clip_emb) if isinstance(layer, Block) else layer(h)
        h = self.out(h)
        h = F.pixel_shuffle(h, self.cfg.patch) if self.cfg.patch > 1 else h
        return h.view(-1, frames, *h.shape[1:]).transpose(1, 2) if frames else h
