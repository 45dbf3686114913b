"""Captioner recipe: image (or clip) to text with the model of models/captioner.py.

Trains on any captioned data: the built-in `shapes` (images) and `moving-shapes` (clips, whose captions name the
direction of motion), or a user's `images` folder with a metadata.jsonl. Captions are byte-level BPE tokens
learned from the training captions (RUN/tokenizer.json; the built-in captions' words become single tokens), so a
user's captions of any wording work. Training always sees full captions (the caption dropout that text-to-image
models use for guidance is turned off).

Evaluation decodes free-running (the model reads its own previous tokens) and lets the dataset score the captions
(`Dataset.score_captions`): BLEU-4 always, attribute accuracy where a parser reads the captions; the
teacher-forced loss is reported beside them, named as such. `aigc sample RUN --image FILE ...` captions PNG/JPEG
files, npz sample files (images [N,H,W,C]; videos [N,T,H,W,C] for a clip model) and animated GIFs (clip models)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from aigc.config import RunConfig
from aigc.errors import AigcError, check_choice
from aigc.generation import Text
from aigc.models.captioner import Captioner, CaptionerConfig
from aigc.recipes.base import TokenizerRecipe

CORPUS = 20000                     # captions the tokenizer learns from (clips: drawn from the generator)
DECODE_BATCH = 250
TRAIN_PEEK = 256                   # eval items decoded free-running at every training evaluation


class CaptionerRecipe(TokenizerRecipe):
    family = "captioner"
    ModelConfig = CaptionerConfig

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.model = Captioner(cfg.model, cfg.model.eos)
        self.modules = {"captioner": self.model}
        self.device = torch.device("cpu")
        self.key = "video" if cfg.model.clip_frames else "image"

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        check_choice("model.decoding", m.decoding, ("greedy", "beam", "top_p"))
        if m.n_embd % m.n_head:
            raise AigcError(f"model.n_embd ({m.n_embd}) must be a multiple of model.n_head ({m.n_head})")
        if m.block_size < 3 or m.grid < 1 or m.enc_width < 1 or m.n_layer < 1 or m.enc_layers < 0 or m.beam < 1:
            raise AigcError("model.block_size must be >= 3; model.grid, enc_width, n_layer and beam >= 1; "
                            "enc_layers >= 0")
        if not 0 < m.top_p <= 1:
            raise AigcError(f"model.top_p must be in (0, 1], got {m.top_p}")

    # ---------------------------------------------------------------- data
    @classmethod
    def load_data(cls, cfg, run_dir: Path | None = None):
        """The captioned dataset, its image or clip shape written into the config, and the tokenizer: the run's
        own (RUN/tokenizer.json) or a new one learned from the training captions."""
        from aigc.data import entry, load_dataset
        from aigc.data.tokenizers import BPETokenizer, load_tokenizer

        kind = entry(cfg.data.name).kind
        if kind not in ("images", "video"):
            raise AigcError(f"the captioner family reads images or clips (shapes, moving-shapes, or an images "
                            f"folder with a metadata.jsonl), not the {kind} dataset '{cfg.data.name}'")
        data = load_dataset(cfg.data)
        if data.eval.captions is None:
            raise AigcError(f"the captioner needs captioned data; '{data.name}' has no captions (an images folder "
                            "needs a metadata.jsonl with one {\"file_name\": ..., \"text\": ...} per line)")
        data.caption_dropout = 0.0                     # a captioner learns to say every attribute
        m = cfg.model
        if kind == "video":
            cfg.data.channels, cfg.data.image_size = data.channels, data.size
            m.clip_frames = data.frames
        else:
            c, h, _ = data.image_shape
            cfg.data.channels, cfg.data.image_size = c, h
        m.channels = cfg.data.channels
        tok_file = Path(run_dir) / cls.TOKENIZER_FILE if run_dir else None
        if tok_file is not None and tok_file.is_file():
            data.tokenizer = load_tokenizer(tok_file)
        else:
            data.tokenizer = BPETokenizer.train(training_captions(data), cfg.model.tokenizer_vocab,
                                                prefix_space=True)
        cls.set_vocab_size(cfg, data.tokenizer)
        m.eos = data.tokenizer.eot_id
        return data

    @staticmethod
    def make_batcher(data, cfg):
        from aigc.data import Batcher
        from aigc.data.video import VideoBatcher

        cls = VideoBatcher if cfg.model.clip_frames else Batcher
        return cls(data, cfg.data.batch_size, cfg.train.seed)

    def token_batch(self, captions: list[str]) -> torch.Tensor:
        """Captions -> (B, L+1) int64 [eos, tokens, eos, -1 padding], cut to the model's block_size."""
        eos, room = self.cfg.model.eos, self.cfg.model.block_size - 1
        rows = [[eos, *self.tokenizer.encode(c).tolist()[:room], eos] for c in captions]
        out = torch.full((len(rows), max(map(len, rows))), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r)
        return out

    # ---------------------------------------------------------------- trainer hooks
    def param_groups(self):
        return {"captioner": list(self.model.parameters())}

    def ema_modules(self):
        return self.modules

    def train_step(self, batch, opt):
        dev = self.device_of()
        out = self.model.loss(batch[self.key].to(dev), self.token_batch(batch["caption"]).to(dev))
        opt.update("captioner", out["loss"])
        return {"loss": out["loss"].detach()}

    def evaluate(self, data, max_batches=None, num=None) -> dict[str, float]:
        """Teacher-forced loss (nats per caption token) on the eval split (the first `max_batches` batches of 250
        or `num` items; all when both are None) and, during training, free-running caption accuracy on its first
        items."""
        dev = self.device_of()
        limit = num if max_batches is None else max_batches * DECODE_BATCH
        total = count = 0.0
        for batch in data.eval_batches(DECODE_BATCH, limit):
            out = self.model.loss(batch[self.key].to(dev), self.token_batch(batch["caption"]).to(dev))
            total += out["sum"].item()
            count += out["count"].item()
        result = {"teacher_forced_loss": round(total / max(count, 1), 4)}
        if max_batches is not None:
            n = min(TRAIN_PEEK, len(data.eval))
            texts = self.caption(torch.cat([b[self.key] for b in data.eval_batches(DECODE_BATCH, n)]))
            peek = data.score_captions(texts, torch.arange(n))
            result.update({k: v for k, v in peek.items() if k in ("caption_accuracy", "caption_accuracy_holdout",
                                                                  "bleu4")})
        return result

    def save_samples(self, path: Path) -> None:
        """Training samples are captions: the first eval items' captions are logged by `evaluate`."""

    def full_eval(self, data, num=None, k=None, progress=None) -> dict:
        """Free-running captions (the model's default decoding) of the first `num` eval items (default all),
        scored by the dataset, with the teacher-forced loss beside them."""
        n = min(num or len(data.eval), len(data.eval))
        texts = []
        for batch in data.eval_batches(DECODE_BATCH, n):
            texts += self.caption(batch[self.key])
            if progress:
                progress(len(batch[self.key]))
        report = data.score_captions(texts, torch.arange(n))
        refs = data.eval.captions(torch.arange(min(5, n)))
        examples = [{"caption": t, "reference": r} for t, r in zip(texts, refs)]
        return {**report, "decoding": self.decoding_name(), **self.evaluate(data, num=n), "examples": examples}

    # ---------------------------------------------------------------- captioning
    def decoding_name(self, beam: int | None = None, top_p: float | None = None) -> str:
        m = self.cfg.model
        if top_p is not None or (beam is None and m.decoding == "top_p"):
            return f"top_p {top_p or m.top_p}"
        if beam is not None or m.decoding == "beam":
            return f"beam {beam or m.beam}"
        return "greedy"

    def caption(self, x: torch.Tensor, beam: int | None = None, top_p: float | None = None, seed: int = 0,
                progress=None) -> list[str]:
        """Captions of images (N, C, H, W) or clips (N, C, T, H, W) in [0, 1]: greedy unless `beam` or `top_p`
        (or the model's `decoding`) says otherwise. Nucleus sampling draws from a generator seeded by `seed`."""
        m = self.cfg.model
        how = self.decoding_name(beam, top_p)
        g = torch.Generator().manual_seed(seed)
        out = []
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(x), DECODE_BATCH):
                chunk = x[i:i + DECODE_BATCH].to(self.device_of())
                if how.startswith("beam"):
                    ids = self.model.beam_search(chunk, beam or m.beam)
                elif how.startswith("top_p"):
                    ids = self.model.sample(chunk, top_p=top_p or m.top_p, generator=g)
                else:
                    ids = self.model.sample(chunk)
                out += [self.tokenizer.decode(t).strip() for t in ids]
                if progress:
                    progress(len(out), len(x))
        return out

    def accepts(self) -> set[str]:
        return {"image", "beam", "top_p"}

    def describe_model(self) -> str:
        return f"{'clip' if self.cfg.model.clip_frames else 'image'} captioner"

    def generate(self, request, stream=None, progress=None) -> Text:
        """One caption per input (request.image: file paths, file contents as bytes, or uint8 arrays); `num` > 1
        draws that many captions per input, which only differ under top-p sampling."""
        if not request.image:
            raise AigcError("give the images to caption: --image FILE (repeatable; PNG/JPEG, an npz sample file, "
                            "or a GIF for a clip model)")
        if request.beam is not None and request.top_p is not None:
            raise AigcError("give a beam width or top-p, not both")
        if request.beam is not None and not 1 <= request.beam <= 64:
            raise AigcError(f"the beam width must be in 1..64, got {request.beam}")
        num = request.num or 1
        if num > 1 and request.top_p is None and self.cfg.model.decoding != "top_p":
            raise AigcError("several captions per image differ only when sampled: set top_p (--top-p) to ask "
                            "for more than one")
        names, x = read_inputs(request.image, self.cfg)
        x = x.repeat_interleave(num, 0)
        texts = self.caption(x, request.beam, request.top_p, request.seed, progress)
        return Text(texts, images=[n for n in names for _ in range(num)])


def training_captions(data) -> list[str]:
    """What the tokenizer learns from: the training split's captions, or captions of clips the generator makes."""
    if data.train is not None:
        n = len(data.train)
        return data.train.captions(torch.randperm(n, generator=torch.Generator().manual_seed(0))[:CORPUS])
    return data.make(CORPUS, torch.Generator().manual_seed(0))["caption"]


# ---------------------------------------------------------------- reading what to caption
def read_inputs(items, cfg) -> tuple[list[str], torch.Tensor]:
    """(names, float (N, C, H, W) or (N, C, T, H, W) in [0, 1]) for request.image items: file paths, file bytes or
    uint8 arrays [H,W,C] / [T,H,W,C]. Images are resized and centre-cropped to the model's size; a clip's frames
    are resampled evenly to the model's frame count."""
    size, channels, frames = cfg.data.image_size, cfg.data.channels, cfg.model.clip_frames
    names, out = [], []
    for i, item in enumerate(items):
        name = item if isinstance(item, str) else f"input {i}"
        if isinstance(item, np.ndarray):
            arrays = [item]
        elif isinstance(item, (bytes, bytearray)):
            arrays = [_decode(io.BytesIO(item), name, size, channels, frames)]
        else:
            path = Path(item)
            if not path.is_file():
                raise AigcError(f"image file not found: {path}")
            if path.suffix.lower() == ".npz":
                from aigc.evaluation import load_samples_npz, load_videos_npz

                key = "videos" if frames else "images"
                arr = (load_videos_npz if frames else load_samples_npz)(path)[key]      # channels first
                arrays = list(np.moveaxis(arr.numpy(), 1, -1))
                names += [f"{path}[{j}]" for j in range(len(arrays))]
                out += [_tensor(a, name, size, channels, frames) for a in arrays]
                continue
            arrays = [_decode(path, name, size, channels, frames)]
        names.append(name)
        out += [_tensor(a, name, size, channels, frames) for a in arrays]
    return names, torch.stack(out)


def _decode(src, name: str, size: int, channels: int, frames: int) -> np.ndarray:
    """An image file -> uint8 [H, W, C] at the model's size; for a clip model, an animated GIF -> [T, H, W, C]."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    from aigc.data.images import fit_image, load_image

    try:
        if not frames:
            return np.moveaxis(load_image(src, size, channels), 0, -1)
        with Image.open(src) as im:
            seq = [np.moveaxis(fit_image(f.convert("RGB"), size, channels), 0, -1) for f in ImageSequence.Iterator(im)]
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise AigcError(f"{name} is not a readable image: {e}") from None
    if len(seq) < 2:
        raise AigcError(f"{name} has one frame; this clip captioner reads clips (an animated GIF or an npz of "
                        "videos)")
    return np.stack(seq)


def _tensor(a: np.ndarray, name: str, size: int, channels: int, frames: int) -> torch.Tensor:
    """uint8 [H, W, C] or [T, H, W, C] -> float channels-first in [0, 1] with the model's shape."""
    want = 4 if frames else 3
    if a.dtype != np.uint8 or a.ndim != want or a.shape[-1] not in (1, 3):
        layout = "[T,H,W,C]" if frames else "[H,W,C]"
        raise AigcError(f"{name}: expected uint8 {layout} with C = 1 or 3, got {a.dtype} {list(a.shape)}")
    x = torch.from_numpy(np.array(a, dtype=np.float32)).div(255)
    x = x.movedim(-1, -3)                                         # (..., C, H, W)
    if x.shape[-3] != channels:
        x = x.mean(-3, keepdim=True) if channels == 1 else x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    if x.shape[-1] != size or x.shape[-2] != size:
        flat = x.reshape(-1, *x.shape[-3:])
        flat = torch.nn.functional.interpolate(flat, size=(size, size), mode="bilinear", antialias=True)
        x = flat.reshape(*x.shape[:-2], size, size)
    if frames:
        idx = torch.linspace(0, x.shape[0] - 1, frames).round().long()
        x = x[idx].transpose(0, 1)                                # (C, T, H, W)
    return x.clamp(0, 1)
