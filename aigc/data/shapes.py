"""`shapes`: captioned synthetic 32x32 images, one hard-edged filled shape on black (spec: DESIGN.md).

Pixel (px, py) covers [px, px+1) x [py, py+1); a shape of size s centred at (cx, cy) owns the box
[cx - s/2, cx + s/2)^2 and a pixel is filled when its centre (px+.5, py+.5) lies inside the shape:
  square    the whole box (exactly s x s pixels)
  circle    |centre - (cx, cy)| <= s/2
  triangle  apex (cx, cy - s/2), base on the box's bottom edge, base width = height = s; a row is
            filled where it is covered at its lower edge, so the apex row has 2 px and the base s px
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from aigc.data import Dataset, ImageConfig, Split, finish_images
from aigc.errors import AigcError

SIZE = 32
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (230, 50, 50), "green": (50, 200, 80), "blue": (60, 100, 240),
    "yellow": (240, 220, 60), "magenta": (220, 70, 220), "cyan": (70, 220, 230),
}
COLOR_NAMES = tuple(COLORS)
SIZES = {"small": 8, "large": 14}
SIZE_NAMES = tuple(SIZES)
GRID = (8, 16, 24)
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
# position index p -> grid column p % 3, row p // 3
VOCAB = sorted({"a", "in", "the", "shape", *SHAPES, *COLOR_NAMES, *SIZE_NAMES, *" ".join(POSITIONS).split()})


def parse_holdout(pairs: list) -> set[tuple[int, int]]:
    """["green triangle", ...] -> {(color index, shape index)}."""
    out = set()
    for p in pairs:
        words = str(p).split()
        if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
            raise AigcError(f"holdout entry '{p}' is not 'COLOR SHAPE' with COLOR in {', '.join(COLORS)} "
                            f"and SHAPE in {', '.join(SHAPES)}")
        out.add((COLOR_NAMES.index(words[0]), SHAPES.index(words[1])))
    if len(out) >= len(COLORS) * len(SHAPES):
        raise AigcError("holdout removes every (color, shape) pair; nothing is left to train on")
    return out


def sample_attributes(n: int, generator: torch.Generator, holdout: set | None = None) -> dict[str, torch.Tensor]:
    """Draw n attribute tuples; (color, shape) pairs in `holdout` are never drawn."""
    allowed = [(c, s) for c in range(len(COLORS)) for s in range(len(SHAPES)) if (c, s) not in (holdout or set())]
    pair = torch.randint(len(allowed), (n,), generator=generator)
    allowed_t = torch.tensor(allowed, dtype=torch.int64)
    return {
        "color": allowed_t[pair, 0],
        "shape": allowed_t[pair, 1],
        "size": torch.randint(len(SIZES), (n,), generator=generator),
        "position": torch.randint(len(POSITIONS), (n,), generator=generator),
        "jitter_x": torch.randint(-1, 2, (n,), generator=generator),
        "jitter_y": torch.randint(-1, 2, (n,), generator=generator),
    }


def render(attrs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Attributes -> uint8 images [N, 3, 32, 32], vectorised (no per-image Python)."""
    grid = torch.tensor(GRID, dtype=torch.float32)
    cx = grid[attrs["position"] % 3] + attrs["jitter_x"]            # (N,)
    cy = grid[attrs["position"] // 3] + attrs["jitter_y"]
    s = torch.tensor(list(SIZES.values()), dtype=torch.float32)[attrs["size"]]
    return render_at(attrs["shape"], attrs["color"], s, cx, cy)


def render_at(shape: torch.Tensor, color: torch.Tensor, size_px: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
              canvas: int = SIZE) -> torch.Tensor:
    """One filled shape per image: shape / color indices, side `size_px` and centre (cx, cy), all (N,)
    -> uint8 [N, 3, canvas, canvas] (the pixel rule of the module docstring)."""
    mask = shape_masks(shape, size_px, cx, cy, canvas)                              # (N, canvas, canvas)
    rgb = torch.tensor(list(COLORS.values()), dtype=torch.uint8)[color]                # (N, 3)
    return mask[:, None].to(torch.uint8) * rgb[:, :, None, None]


def shape_masks(shape: torch.Tensor, size_px: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
                canvas: int = SIZE) -> torch.Tensor:
    """The pixels a shape owns (the module docstring's rule): bool [N, canvas, canvas]; arguments as `render_at`."""
    circle, square, triangle = all_shape_masks(size_px, cx, cy, canvas)
    shape = shape[:, None, None]
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def all_shape_masks(size_px: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, canvas: int = SIZE):
    """The pixels of a circle, a square and a triangle of side `size_px` centred at (cx, cy), all (N,): three
    bool [N, canvas, canvas] in SHAPES order."""
    cx, cy = cx.float()[:, None, None], cy.float()[:, None, None]
    h = (size_px.float() / 2)[:, None, None]
    coords = torch.arange(canvas, dtype=torch.float32) + 0.5
    u, v = coords[None, None, :], coords[None, :, None]             # pixel centres: x along width, y down
    in_box = (u >= cx - h) & (u < cx + h) & (v >= cy - h) & (v < cy + h)
    circle = (u - cx) ** 2 + (v - cy) ** 2 <= h ** 2
    triangle = in_box & ((u - cx).abs() <= (v + 0.5 - (cy - h)) / 2)
    return circle, in_box, triangle


def generate(n: int, seed: int, holdout: list | None = None, chunk: int = 4096):
    """n images and their attributes, deterministic in `seed`."""
    g = torch.Generator().manual_seed(seed)
    attrs = sample_attributes(n, g, parse_holdout(holdout or []))
    images = torch.cat([render({k: v[i:i + chunk] for k, v in attrs.items()}) for i in range(0, n, chunk)]) \
        if n else torch.zeros(0, 3, SIZE, SIZE, dtype=torch.uint8)
    return images, attrs


def caption(color: int, shape: int, size: int, position: int, keep=(True, True, True, True)) -> str:
    """`a {size} {color} {shape} in the {position}`; dropped attributes are left out (shape -> 'shape')."""
    words = ["a"]
    if keep[0]:
        words.append(SIZE_NAMES[size])
    if keep[1]:
        words.append(COLOR_NAMES[color])
    words.append(SHAPES[shape] if keep[2] else "shape")
    if keep[3]:
        words += ["in", "the", POSITIONS[position]]
    return " ".join(words)


def captions(attrs: dict[str, torch.Tensor], index: torch.Tensor, dropout: float = 0.0,
             generator: torch.Generator | None = None) -> list[str]:
    """Captions of the items at `index`, each attribute dropped with probability `dropout`."""
    keep = torch.rand(len(index), 4, generator=generator) >= dropout if dropout > 0 else \
        torch.ones(len(index), 4, dtype=torch.bool)
    cols = [attrs[k][index].tolist() for k in ("color", "shape", "size", "position")]
    return [caption(c, s, z, p, tuple(k)) for c, s, z, p, k in zip(*cols, keep.tolist())]


# ---------------------------------------------------------------- reading attributes back off pixels
def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected component of each boolean mask (N, H, W) (ties: the one holding the
    highest pixel index); all False where a mask is empty. Every pixel starts with its own label and
    takes the largest label among its 3x3 neighbours inside the mask until nothing changes, so each
    component ends labelled by its last pixel (as many rounds as the longest path inside a component)."""
    n, h, w = mask.shape
    if n == 0:
        return mask.clone()
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w)   # exact in float32 up to 2^24
    label = torch.where(mask, ids, 0.0)
    while True:
        grown = torch.where(mask, torch.nn.functional.max_pool2d(label[:, None], 3, 1, 1)[:, 0], 0.0)
        if torch.equal(grown, label):
            break
        label = grown
    flat = label.view(n, -1).long()
    sizes = torch.zeros(n, h * w + 1).scatter_add_(1, flat, torch.ones(flat.shape))
    sizes[:, 0] = 0                                                     # the background is no component
    return (flat == sizes.argmax(1, keepdim=True)).view(n, h, w) & mask


FIT_SIZES = (-3, -2, -1, 0)            # sides tried, relative to the found box's longer side (soft edges widen it)
FIT_SHIFTS = (-1.0, -0.5, 0.0, 0.5, 1.0)   # centres tried, relative to the box centre, per axis (px)


def fit_errors(bright: torch.Tensor, side: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
               chunk: int = 64) -> torch.Tensor:
    """How well each shape explains a brightness map: (N, 3) in SHAPES order, the least squared error
    sum((bright - template)^2) over the templates of sides side + FIT_SIZES and centres (cx, cy) + FIT_SHIFTS,
    less the constant sum(bright^2). bright: float (N, H, W) in [0, 1]; side, cx, cy: (N,).
    Every template lies within a window of side + 6 px around the box, so the sums run over such a window
    (zero outside the canvas, where templates own no pixels), as wide as the widest in each chunk of frames:
    2.5x fewer pixels than the whole 32 x 32 canvas for the largest shapes, more for the small ones."""
    n, hh, ww = bright.shape
    offsets = torch.tensor([(ds, dx, dy) for ds in FIT_SIZES for dx in FIT_SHIFTS for dy in FIT_SHIFTS])
    k = len(offsets)
    weight = 1 - 2 * bright.float()                                    # (b - t)^2 - b^2 = t (1 - 2b) for t in {0, 1}
    reach = side.clamp(min=2).float() / 2 + max(-min(FIT_SHIFTS), max(FIT_SHIFTS)) + 1
    out = []
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        c_x, c_y, s0 = cx[i:i + m].float(), cy[i:i + m].float(), side[i:i + m]
        x0 = (c_x - reach[i:i + m]).floor().long()                       # the window's first column and row
        y0 = (c_y - reach[i:i + m]).floor().long()
        win = int((2 * reach[i:i + m]).ceil().max()) + 2
        ar = torch.arange(win)
        cols, rows = x0[:, None] + ar, y0[:, None] + ar                   # (m, win) canvas indices
        inside = ((rows >= 0) & (rows < hh))[:, :, None] & ((cols >= 0) & (cols < ww))[:, None, :]
        w = weight[i:i + m][torch.arange(m)[:, None, None], rows.clamp(0, hh - 1)[:, :, None],
                            cols.clamp(0, ww - 1)[:, None, :]]
        w = torch.where(inside, w, 0.0).reshape(m, 1, win * win)
        s = (s0[:, None] + offsets[:, 0]).clamp(min=2).flatten()
        x = (c_x[:, None] - x0[:, None] + offsets[:, 1]).flatten()          # centres in the window's frame
        y = (c_y[:, None] - y0[:, None] + offsets[:, 2]).flatten()
        errs = [(t.reshape(m, k, win * win).float() * w).sum(2).min(1).values
                for t in all_shape_masks(s, x, y, win)]
        out.append(torch.stack(errs, 1))
    return torch.cat(out) if out else torch.zeros(0, len(SHAPES))


def detect(images: torch.Tensor, threshold: int = 100, component: bool = True) -> dict[str, torch.Tensor]:
    """Attributes of one-shape images, read off the pixels with no training (the inverse of `render`).

    images: uint8 (N, 3, 32, 32) (or float in [0, 1]). Returns int64 tensors color, shape, size,
    position (-1 where no shape is found), the bounding-box centre cx, cy (float) and `stray` (bool):
      foreground  pixels whose brightest channel exceeds `threshold` (every palette color has one >= 220)
      the shape   the largest 8-connected foreground component (`component`); `stray` marks images with
                  foreground pixels outside it. A rendered image has exactly one component; a generated
                  one with a crisp shape and one speck of noise elsewhere (a pixel just over `threshold`)
                  is read as that shape, where reading every foreground pixel (component = False, the
                  strict reading) stretches the box to the speck and gets shape and position wrong
      color       nearest palette color to the mean foreground RGB
      size        small if the bounding box's longer side is < 11 px (8 vs 14)
      shape       the shape whose rendering (`shape_masks`) best explains the frame's brightness near the
                  found pixels (brightest channel, divided by its median over the found pixels, capped at 1) in
                  least squares, each at its best side (the box's longer side minus 0 to 3 px) and centre (the
                  box centre +-1 px in 0.5 px steps), see `fit_errors`. Generated shapes have soft edges: a
                  ring of pixels at part brightness, some over `threshold`, widens the box and cuts its
                  corners; fitting whole shapes reads them where rules on the thresholded pixels do not
      position    nearest grid point (8, 16, 24) to the box centre, per axis"""
    x = images if images.dtype == torch.uint8 else (images.clamp(0, 1) * 255).round().to(torch.uint8)
    x = x.long()
    n = x.shape[0]
    brightest = x.max(1).values                                       # (N, H, W)
    fore = brightest > threshold
    mask = largest_component(fore) if component else fore
    area = mask.sum((1, 2))
    found = area > 0
    rows, cols = mask.any(2), mask.any(1)                             # (N, H), (N, W)
    idx = torch.arange(SIZE)
    big = SIZE + 1
    y0 = torch.where(rows, idx, big).min(1).values
    y1 = torch.where(rows, idx, -1).max(1).values
    x0 = torch.where(cols, idx, big).min(1).values
    x1 = torch.where(cols, idx, -1).max(1).values
    h, w = (y1 - y0 + 1).clamp(min=1), (x1 - x0 + 1).clamp(min=1)
    mean_rgb = (x * mask[:, None]).sum((2, 3)).double() / area.clamp(min=1)[:, None]
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float64)
    color = torch.cdist(mean_rgb, palette).argmin(1)
    side = torch.maximum(h, w)
    size = (side >= 11).long()
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
    bright = brightest.double()
    median = torch.where(mask, bright, float("nan")).flatten(1).nanmedian(1).values.nan_to_num(255)
    near = torch.nn.functional.max_pool2d(mask[:, None].float(), 5, 1, 2)[:, 0] > 0   # within 2 px
    bright = torch.where(near, bright / median.clamp(min=1)[:, None, None], 0).clamp(max=1).float()
    shape = fit_errors(bright, side, cx, cy).argmin(1)
    grid = torch.tensor(GRID, dtype=torch.float64)
    col = (cx.double()[:, None] - grid).abs().argmin(1)
    row = (cy.double()[:, None] - grid).abs().argmin(1)
    position = row * 3 + col
    miss = torch.full((n,), -1, dtype=torch.long)
    return {"color": torch.where(found, color, miss), "shape": torch.where(found, shape, miss),
            "size": torch.where(found, size, miss), "position": torch.where(found, position, miss),
            "cx": cx.double(), "cy": cy.double(), "stray": (fore & ~mask).any(2).any(1)}


def parse_caption(text: str) -> dict[str, int]:
    """The attributes a prompt names, e.g. 'a red circle' -> {'color': 0, 'shape': 0}; unknown words
    are ignored (callers decide whether a prompt with no known word is an error)."""
    t = " " + " ".join(text.lower().split()) + " "
    out = {}
    for key, names in (("color", COLOR_NAMES), ("shape", SHAPES), ("size", SIZE_NAMES)):
        for i, name in enumerate(names):
            if f" {name} " in t:
                out[key] = i
    for i, name in sorted(enumerate(POSITIONS), key=lambda p: -len(p[1])):   # 'top left' before 'top'
        if f" {name} " in t:
            out["position"] = i
            break
    return out


def write_folder(folder, n: int, seed: int = 0) -> list[str]:
    """n shapes images as PNG files plus a metadata.jsonl with their full captions: a captioned image folder (the
    `images` dataset's format) that stands in for a user's own pictures in tests and benchmarks. Returns the
    captions, in file order."""
    import json
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, attrs = generate(n, seed)
    caps = captions(attrs, torch.arange(n))
    lines = []
    for i, (img, cap) in enumerate(zip(images, caps)):
        name = f"{i:05d}.png"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / name)
        lines.append(json.dumps({"file_name": name, "text": cap}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return caps


# ---------------------------------------------------------------- the `shapes` dataset
@dataclass
class Config(ImageConfig):
    num_train: int = 50000           # how many synthetic training images
    num_eval: int = 5000             # how many held-out evaluation images (every pair, holdout too)
    holdout: list = field(default_factory=list)   # ["green triangle", ...]: (color, shape) pairs never trained on
    caption_dropout: float = 0.1     # chance of dropping each caption attribute in training


def random_prompts(n: int, generator: torch.Generator | None = None) -> list[str]:
    """Full captions of n random images."""
    return captions(sample_attributes(n, generator), torch.arange(n))


class ShapesDataset(Dataset):
    """Scored with 18-class features (every (color, shape) pair) and, for prompts, the detector above."""
    class_scored = False

    def feature_classes(self):
        return self.train.attrs["color"] * 3 + self.train.attrs["shape"], \
            self.eval.attrs["color"] * 3 + self.eval.attrs["shape"], len(COLORS) * len(SHAPES)

    def score(self, images, labels=None, prompts=None) -> dict:
        out = super().score(images, labels, None)
        if prompts is not None:
            out.update(prompt_accuracy(images, prompts, self.holdout))
        return out

    def score_captions(self, texts: list[str], index: torch.Tensor) -> dict:
        """BLEU-4 and, read back by `parse_caption`, the accuracy of every attribute against the image's own
        (`caption_accuracy`: all four right), apart for the held-out (color, shape) pairs when there are any."""
        from aigc.metrics.captions import attribute_accuracy, read_attributes

        keys = ("color", "shape", "size", "position")
        read = read_attributes(texts, parse_caption, keys)
        truth = {k: self.eval.attrs[k][index] for k in keys}
        out = {**super().score_captions(texts, index), **attribute_accuracy(read, truth)}
        if self.holdout:
            pairs = parse_holdout(self.holdout)
            held = torch.tensor([p in pairs for p in zip(truth["color"].tolist(), truth["shape"].tolist())])
            for name, sel in (("seen", ~held), ("holdout", held)):
                if sel.any():
                    sub = attribute_accuracy({k: v[sel] for k, v in read.items()},
                                             {k: v[sel] for k, v in truth.items()})
                    out[f"caption_accuracy_{name}"] = sub["caption_accuracy"]
                    out[f"num_{name}"] = int(sel.sum())
        return out

    def judge_captions(self, images, prompts, captions) -> dict:
        """Captions as a second judge of text-to-image samples: how often the captions name what the prompts asked
        for (`caption_judge_accuracy`, every attribute the prompt names), beside the detector's prompt accuracy on
        the same samples, and how often the two judges agree, per sample (`judge_agreement`: both say right or both
        say wrong) and per attribute (the caption's reading equals the detector's)."""
        keys = ("color", "shape", "size", "position")
        want = [parse_caption(p) for p in prompts]
        said = [parse_caption(c) for c in captions]
        det = detect(images)
        cap_ok = torch.tensor([all(s.get(k) == v for k, v in w.items()) for w, s in zip(want, said)])
        det_ok = torch.tensor([all(int(det[k][i]) == v for k, v in w.items()) for i, w in enumerate(want)])
        out = {**super().judge_captions(images, prompts, captions),
               "caption_judge_accuracy": round(float(cap_ok.double().mean()), 4),
               "detector_prompt_accuracy": round(float(det_ok.double().mean()), 4),
               "judge_agreement": round(float((cap_ok == det_ok).double().mean()), 4)}
        for k in keys:
            read = torch.tensor([s.get(k, -1) for s in said])
            out[f"{k}_agreement"] = round(float((read == det[k]).double().mean()), 4)
        return out


def prompt_accuracy(images: torch.Tensor, prompts: list[str], holdout: list | None = None) -> dict:
    """Prompt accuracy and per-attribute accuracy; with `holdout` (color, shape) pairs that the model never
    saw, also `prompt_accuracy_seen` / `prompt_accuracy_holdout` over the prompts naming seen / held-out pairs."""
    from aigc.metrics.prompts import prompt_accuracy as accuracy

    det = detect(images)
    parsed = [parse_caption(p) for p in prompts]
    if not any(parsed):
        raise AigcError("none of the prompts names a known shape, color, size or position")
    requested = {k: torch.tensor([p.get(k, -1) for p in parsed]) for k in ("color", "shape", "size", "position")}
    out = {**accuracy(det, requested), "stray_share": round(float(det["stray"].double().mean()), 4)}
    if holdout:
        pairs = parse_holdout(holdout)
        held = torch.tensor([(p.get("color", -1), p.get("shape", -1)) in pairs for p in parsed])
        for name, sel in (("seen", ~held), ("holdout", held)):
            if sel.any():
                sub = accuracy({k: v[sel] for k, v in det.items()}, {k: v[sel] for k, v in requested.items()})
                out[f"prompt_accuracy_{name}"] = sub["prompt_accuracy"]
                out[f"num_{name}"] = int(sel.sum())
    return out


def load(cfg: Config) -> ShapesDataset:
    if cfg.num_train < 1 or cfg.num_eval < 1:
        raise AigcError("data.num_train and data.num_eval must be positive for shapes")
    tr_img, tr_attr = generate(cfg.num_train, seed=1234, holdout=cfg.holdout)
    ev_img, ev_attr = generate(cfg.num_eval, seed=4321)   # eval covers every pair, holdout too

    def cap(attrs):
        return lambda index, dropout=0.0, g=None: captions(attrs, index, dropout, g)

    ds = ShapesDataset("shapes", Split(tr_img, tr_attr["shape"], cap(tr_attr), tr_attr),
                       Split(ev_img, ev_attr["shape"], cap(ev_attr), ev_attr),
                       num_classes=3, class_names=list(SHAPES), caption_dropout=cfg.caption_dropout,
                       holdout=list(cfg.holdout), text_vocab=list(VOCAB))
    return finish_images(ds, cfg)
