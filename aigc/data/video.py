"""Video datasets (DESIGN.md 'Built-in data specs'): `moving-shapes` (captioned) and `moving-mnist`.

Clips are generated on the fly from a seed, never stored: the training stream draws batch k from a
generator seeded by (seed, k), so a resumed run sees exactly the clips an uninterrupted one would
(the batcher's whole state is k). A fixed evaluation set is generated once from its own seed.
Batches are dicts {"video": float (B, C, T, H, W) in [0, 1], "caption": list[str]?}.

moving-shapes: one 8 px shape of the shapes palette (data/shapes.py) on a 32x32 black canvas moving
1 px/frame left, right, up or down and bouncing off the border: the centre moves in [4, 28] (the shape
never leaves the canvas) and reflects at the ends. The start is drawn so that the first two moves go
the captioned way (a clip captioned "moving right" never starts against the right border), which keeps
the caption true of what the clip shows first and lets the detector read the direction off the pixels.
Caption `a {color} {shape} moving {direction}`; each attribute may be dropped in training.

moving-mnist (Srivastava et al. 2015): 28x28 MNIST digits on a 64x64 canvas (configurable), 1 or 2
digits, each with a random direction and a speed uniform in [2, 4] px/frame, bouncing off the border,
combined by max. Training clips use MNIST training digits, evaluation clips the test digits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from aigc.config import DataConfig
from aigc.data import Dataset, Split, shapes
from aigc.errors import AigcError

DIRECTIONS = ("left", "right", "up", "down")
STEPS = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])          # (dx, dy) per direction, y pointing down
SHAPE_PX = 8
CANVAS = shapes.SIZE
LO, HI = SHAPE_PX // 2, CANVAS - SHAPE_PX // 2                   # the centre stays in [4, 28]
VOCAB = sorted({"a", "moving", "shape", *shapes.SHAPES, *shapes.COLOR_NAMES, *DIRECTIONS})
DIGIT = 28


@dataclass
class VideoConfig(DataConfig):
    image_size: int = 0              # 0 = the dataset's own canvas (32 moving-shapes, 64 moving-mnist)
    channels: int = 0                # set from the data
    frames: int = 16                 # frames per clip
    num_eval: int = 5000             # how many held-out evaluation clips


@dataclass
class MovingShapesConfig(VideoConfig):
    caption_dropout: float = 0.1     # chance of dropping each caption attribute in training


@dataclass
class MovingMnistConfig(VideoConfig):
    digits: int = 1                  # digits per clip (1 or 2)
    download: bool = True            # MNIST: download when the files are missing and the machine is online


@dataclass
class VideoDataset(Dataset):
    """Clips made on the fly: `make(n, generator, caption_dropout)` -> {"video": uint8 (n, C, T, H, W), ...};
    the fixed evaluation clips are the eval split (key "video")."""
    frames: int = 16
    size: int = 32
    channels: int = 3
    make: Callable | None = None

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        return self.channels, self.frames, self.size, self.size

    def describe(self) -> str:
        return f"clips of {self.frames} frames {self.size}x{self.size}x{self.channels}, generated on the fly"

    def check_shape(self, videos: torch.Tensor) -> None:
        if tuple(videos.shape[1:]) != self.video_shape:
            raise AigcError(f"samples are {tuple(videos.shape[1:])} (C, T, H, W) but these {self.name} clips are "
                            f"{self.video_shape}: a different frame count or size")


class MovingShapes(VideoDataset):
    def score(self, videos, labels=None, prompts=None) -> dict:
        """The text-to-video metrics of metrics/video.py, read off the pixels by `detect_shape_clips`."""
        from aigc.metrics.video import clip_metrics

        self.check_shape(videos)
        requested = None
        if prompts is not None:
            parsed = [parse_clip_caption(p) for p in prompts]
            if not any(parsed):
                raise AigcError("none of the prompts names a known shape, color or direction")
            requested = {k: torch.tensor([p.get(k, -1) for p in parsed]) for k in ("color", "shape", "direction")}
        return {"num_samples": len(videos), **clip_metrics(detect_shape_clips(videos), requested)}

    def score_captions(self, texts: list[str], index: torch.Tensor) -> dict:
        """BLEU-4 and, read back by `parse_clip_caption`, the accuracy of shape, color and direction against the
        clip's own (`caption_accuracy`: all three right)."""
        from aigc.metrics.captions import attribute_accuracy, read_attributes

        keys = ("color", "shape", "direction")
        truth = {k: self.eval.attrs[k][index] for k in keys}
        return {**super().score_captions(texts, index),
                **attribute_accuracy(read_attributes(texts, parse_clip_caption, keys), truth)}


class MovingMnist(VideoDataset):
    digits: Dataset | None = None        # the MNIST Dataset (its feature classifier scores the digit crops)

    def score(self, videos, labels=None, prompts=None) -> dict:
        """Per-frame FID etc. on 28x28 crops around each digit, against crops of the evaluation clips
        (test digits) found the same way, and the share of clips whose digits are classified the same in
        every frame (digit_consistency; as a multiset of classes for 2 digits)."""
        from aigc.metrics.classifier import extract
        from aigc.metrics.images import MIN_SAMPLES, image_report

        self.check_shape(videos)
        if prompts is not None:
            raise AigcError(f"prompt metrics need moving-shapes clips, not {self.name}")
        k = self.eval.labels.shape[1]
        net, info = self.digits.classifier()
        fake = digit_crops(videos, k)                                    # (N, T, D, 1, 28, 28)
        real = digit_crops(self.eval.images, k)
        train = digit_crops(self.make(max(1, len(videos)), torch.Generator().manual_seed(99))["video"], k)
        flat = lambda c: c.flatten(0, 2)                                 # noqa: E731
        out = {"num_samples": len(videos), "crops_per_clip": fake.shape[1] * k}
        if len(flat(fake)) >= MIN_SAMPLES:
            out.update(image_report(net, "mnist", flat(real), flat(fake), flat(train),
                                    ref_split="moving-mnist eval crops"))
        else:
            out["feature_metrics"] = f"skipped: {len(flat(fake))} crops (< {MIN_SAMPLES}) are too few for FID/KID/PR"
        _, probs = extract(net, flat(fake))
        pred = probs.argmax(1).view(fake.shape[0], fake.shape[1], k).sort(-1).values.cpu()
        out["digit_consistency"] = round(float((pred == pred[:, :1]).all(-1).all(-1).double().mean()), 4)
        out["classifier_test_accuracy"] = info.get("test_accuracy")
        return out


class VideoBatcher:
    """Endless training batches; batch k comes from a generator seeded by (seed, k)."""

    def __init__(self, data: VideoDataset, batch_size: int, seed: int):
        if batch_size < 1:
            raise AigcError(f"data.batch_size must be at least 1, got {batch_size}")
        self.data, self.batch_size, self.seed, self.count = data, batch_size, seed, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.count + 17)
        self.count += 1
        clip = self.data.make(self.batch_size, g, self.data.caption_dropout)
        out = {"video": clip["video"].float().div_(255)}
        if "caption" in clip:
            out["caption"] = clip["caption"]
        return out

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])


def bounce(p0: torch.Tensor, v: torch.Tensor, t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Positions after t steps from p0 at velocity v, reflected at lo and hi: p0, v (N,), t (T,) -> (N, T)."""
    return lo + reflect(p0[:, None] - lo + v[:, None] * t[None, :], hi - lo)


def reflect(u: torch.Tensor, span: torch.Tensor | float) -> torch.Tensor:
    """u folded into [0, span] by reflection at both ends (a triangle wave of slope +-1): a point that runs past
    an edge comes back as a bouncing ball does, and its gradient never vanishes as a sigmoid's does at the edges.
    The clips' shapes bounce by it, and the video GAN's sprite generator folds its points by it."""
    q = torch.remainder(u, 2 * span)
    return torch.where(q <= span, q, 2 * span - q)


# ---------------------------------------------------------------- moving-shapes
def shape_clip_attributes(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """color, shape, direction and the start centre (x0, y0); the first two moves stay inside."""
    direction = torch.randint(len(DIRECTIONS), (n,), generator=generator)
    step = STEPS[direction]
    lo = torch.where(step < 0, LO + 2, LO)                           # room for two moves in the direction
    hi = torch.where(step > 0, HI - 2, HI)
    start = lo + (torch.rand(n, 2, generator=generator) * (hi - lo + 1)).long().clamp(max=hi - lo)
    return {"color": torch.randint(len(shapes.COLORS), (n,), generator=generator),
            "shape": torch.randint(len(shapes.SHAPES), (n,), generator=generator),
            "direction": direction, "x0": start[:, 0], "y0": start[:, 1]}


def shape_clip_centres(attrs: dict[str, torch.Tensor], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (cx, cy), each (N, T), of the shape in every frame."""
    step = STEPS[attrs["direction"]].float()
    t = torch.arange(frames, dtype=torch.float32)
    cx = bounce(attrs["x0"].float(), step[:, 0], t, LO, HI)
    cy = bounce(attrs["y0"].float(), step[:, 1], t, LO, HI)
    return cx, cy


def render_shape_clips(attrs: dict[str, torch.Tensor], frames: int) -> torch.Tensor:
    """uint8 (N, 3, T, 32, 32)."""
    n = len(attrs["color"])
    cx, cy = shape_clip_centres(attrs, frames)
    rep = lambda a: a[:, None].expand(n, frames).reshape(-1)        # noqa: E731
    img = shapes.render_at(rep(attrs["shape"]), rep(attrs["color"]), torch.full((n * frames,), float(SHAPE_PX)),
                           cx.reshape(-1), cy.reshape(-1))
    return img.view(n, frames, 3, CANVAS, CANVAS).transpose(1, 2).contiguous()


def shape_clip_caption(color: int, shape: int, direction: int, keep=(True, True, True)) -> str:
    words = ["a"]
    if keep[0]:
        words.append(shapes.COLOR_NAMES[color])
    words.append(shapes.SHAPES[shape] if keep[1] else "shape")
    if keep[2]:
        words += ["moving", DIRECTIONS[direction]]
    return " ".join(words)


def shape_clip_captions(attrs: dict[str, torch.Tensor], dropout: float = 0.0, generator=None) -> list[str]:
    n = len(attrs["color"])
    keep = torch.rand(n, 3, generator=generator) >= dropout if dropout > 0 else torch.ones(n, 3, dtype=torch.bool)
    cols = [attrs[k].tolist() for k in ("color", "shape", "direction")]
    return [shape_clip_caption(c, s, d, tuple(k)) for c, s, d, k in zip(*cols, keep.tolist())]


def make_shape_clips(n: int, generator: torch.Generator, frames: int, dropout: float = 0.0) -> dict:
    attrs = shape_clip_attributes(n, generator)
    return {"video": render_shape_clips(attrs, frames), "caption": shape_clip_captions(attrs, dropout, generator),
            "attrs": attrs}


def parse_clip_caption(text: str) -> dict[str, int]:
    """The attributes a video prompt names: {'color', 'shape', 'direction'} (unknown words ignored)."""
    words = set(text.lower().replace(",", " ").split())
    out = {}
    for key, names in (("color", shapes.COLOR_NAMES), ("shape", shapes.SHAPES), ("direction", DIRECTIONS)):
        for i, name in enumerate(names):
            if name in words:
                out[key] = i
    return out


def detect_shape_clips(videos: torch.Tensor, min_move: float = 1.5, component: bool = True) -> dict[str, torch.Tensor]:
    """Read moving-shapes clips back off the pixels, with no training.

    videos: uint8 (N, 3, T, 32, 32). Per frame (N, T): color, shape, found, cx, cy, stray from `shapes.detect`
    (`component`: the shape is the frame's largest foreground component; False reads every foreground pixel).
    Per clip (N,): direction = the way the shape's box centre first gets `min_move` px away from where it
    started (the axis with the larger move), -1 if it never does or a frame before that has no shape."""
    n, c, t, h, w = videos.shape
    frames = videos.transpose(1, 2).reshape(n * t, c, h, w)
    det = shapes.detect(frames, component=component)
    per = {k: det[k].view(n, t) for k in ("color", "shape", "cx", "cy", "stray")}
    found = per["shape"] >= 0
    dx, dy = per["cx"] - per["cx"][:, :1], per["cy"] - per["cy"][:, :1]
    moved = (torch.maximum(dx.abs(), dy.abs()) >= min_move) & found
    k = moved.long().argmax(1)                                        # first frame far enough away
    ok = moved.any(1) & (found.cumsum(1).gather(1, k[:, None]).squeeze(1) == k + 1)
    mx, my = dx.gather(1, k[:, None]).squeeze(1), dy.gather(1, k[:, None]).squeeze(1)
    direction = torch.where(mx.abs() >= my.abs(), torch.where(mx < 0, 0, 1), torch.where(my < 0, 2, 3))
    return {**per, "found": found, "direction": torch.where(ok, direction, -1)}


# ---------------------------------------------------------------- moving-mnist
def make_digit_clips(digits: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator, frames: int,
                     size: int, num_digits: int) -> dict:
    """uint8 (n, 1, T, size, size): `num_digits` digits drawn from `digits` (M, 1, 28, 28) per clip."""
    pick = torch.randint(len(digits), (n, num_digits), generator=generator)
    angle = torch.rand(n, num_digits, generator=generator) * 2 * math.pi
    speed = 2 + 2 * torch.rand(n, num_digits, generator=generator)
    span = size - DIGIT
    start = torch.rand(n, num_digits, 2, generator=generator) * span
    t = torch.arange(frames, dtype=torch.float32)
    flat = lambda a: a.reshape(-1)                                   # noqa: E731
    x = bounce(flat(start[..., 0]), flat(speed * angle.cos()), t, 0, span).round().long()   # (n*D, T) top-left
    y = bounce(flat(start[..., 1]), flat(speed * angle.sin()), t, 0, span).round().long()
    src = digits[flat(pick), 0]                                      # (n*D, 28, 28)
    u = torch.arange(size)
    du = u[None, None, :] - x[:, :, None]                            # (n*D, T, size): column inside the digit
    dv = u[None, None, :] - y[:, :, None]
    inside = ((du >= 0) & (du < DIGIT))[:, :, None, :] & ((dv >= 0) & (dv < DIGIT))[:, :, :, None]
    b = torch.arange(len(src))[:, None, None, None]
    canvas = src[b, dv.clamp(0, DIGIT - 1)[:, :, :, None], du.clamp(0, DIGIT - 1)[:, :, None, :]] * inside
    video = canvas.view(n, num_digits, frames, size, size).amax(1)  # digits combined by max
    return {"video": video[:, None].contiguous(), "labels": labels[pick], "index": pick,
            "velocity": torch.stack([speed * angle.cos(), speed * angle.sin()], -1),
            "positions": torch.stack([x, y], -1).view(n, num_digits, frames, 2)}


def digit_crops(videos: torch.Tensor, num_digits: int) -> torch.Tensor:
    """28x28 crops around each digit of every frame: the window with the most ink, then (2 digits) the
    window with the most ink once the first is blanked. videos uint8 (N, 1, T, S, S) -> (N, T, D, 1, 28, 28)."""
    n, _, t, s, _ = videos.shape
    frames = videos[:, 0].reshape(n * t, s, s).clone()
    idx = torch.arange(DIGIT)
    out = []
    for _ in range(num_digits):
        ink = torch.nn.functional.avg_pool2d(frames[:, None].float(), DIGIT, stride=1)[:, 0]   # (NT, s-27, s-27)
        best = ink.flatten(1).argmax(1)
        y0, x0 = best // ink.shape[-1], best % ink.shape[-1]
        rows, cols = (y0[:, None] + idx)[:, :, None], (x0[:, None] + idx)[:, None, :]
        b = torch.arange(n * t)[:, None, None]
        out.append(frames[b, rows, cols].clone())
        frames[b, rows, cols] = 0
    return torch.stack(out, 1).view(n, t, num_digits, 1, DIGIT, DIGIT)


# ---------------------------------------------------------------- loading
def random_prompts(n: int, generator: torch.Generator | None = None) -> list[str]:
    """moving-shapes: full captions of n random clips."""
    return shape_clip_captions(shape_clip_attributes(n, generator))


def _check(cfg: VideoConfig) -> None:
    if cfg.frames < 2:
        raise AigcError(f"data.frames must be at least 2 for video, got {cfg.frames}")
    if cfg.num_eval < 1:
        raise AigcError("data.num_eval must be positive")


def _eval_split(clips: dict) -> Split:
    caps = clips.get("caption")
    captions = (lambda index, dropout=0.0, g=None: [caps[i] for i in index.tolist()]) if caps is not None else None
    return Split(clips["video"], clips.get("labels"), captions, clips.get("attrs", {}), key="video")


def load(cfg: VideoConfig) -> VideoDataset:
    _check(cfg)
    frames = cfg.frames
    if cfg.name == "moving-shapes":
        if cfg.image_size not in (0, CANVAS):
            raise AigcError(f"moving-shapes clips are {CANVAS}x{CANVAS} (DESIGN.md); data.image_size = "
                            f"{cfg.image_size} is not available")
        ev = make_shape_clips(cfg.num_eval, torch.Generator().manual_seed(4321), frames)
        return MovingShapes("moving-shapes", None, _eval_split(ev), caption_dropout=cfg.caption_dropout,
                            text_vocab=list(VOCAB), frames=frames, size=CANVAS, channels=3,
                            make=lambda n, g, drop=0.0: make_shape_clips(n, g, frames, drop))
    from aigc.data.mnist import load_mnist

    size = cfg.image_size or 64
    if size < DIGIT:
        raise AigcError(f"the moving-mnist canvas must be at least {DIGIT} px, got {size}")
    if cfg.digits not in (1, 2):
        raise AigcError(f"data.digits must be 1 or 2, got {cfg.digits}")
    m = load_mnist(cfg.dir, cfg.download)
    tr, te = (m["train_images"], m["train_labels"]), (m["test_images"], m["test_labels"])
    ev = make_digit_clips(*te, cfg.num_eval, torch.Generator().manual_seed(4321), frames, size, cfg.digits)
    data = MovingMnist("moving-mnist", None, _eval_split(ev), frames=frames, size=size, channels=1,
                       make=lambda n, g, drop=0.0: make_digit_clips(*tr, n, g, frames, size, cfg.digits))
    data.digits = Dataset("mnist", Split(*tr), Split(*te), num_classes=10, class_names=[str(i) for i in range(10)],
                          reference_split="test")
    return data
