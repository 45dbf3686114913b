"""The generation contract (DESIGN.md): one typed request and one typed result per output kind.

`aigc sample`, the demo, the benchmarks (and the server) generate through `generate(recipe, request)`:

    request = Request(num=16, prompt="a red circle", guidance=3.0, seed=0)
    result = generate(recipe, request)          # an Images result: uint8 (N, H, W, C) + the prompts used

A recipe declares the kind it produces (`recipe.output`: text | images | video | audio) and the request
fields it accepts (`recipe.accepts()`, which may depend on the trained model: `prompt` only for a
text-conditional one). A field given that the recipe does not accept is a clear error, never ignored.
Same request + same seed = same result, whoever asks."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Union

import numpy as np

from aigc.errors import AigcError

KINDS = ("text", "images", "video", "audio")
DEFAULT_NUM = {"text": 1, "images": 64, "video": 16, "audio": 8}
MAX_NEW_TOKENS = 100_000                 # a ceiling, so that a typo cannot start a generation that never ends
# the command-line spelling of each field, for error messages
FLAGS = {"num": "--num", "seed": "--seed", "prompt": "--prompt", "label": "--label", "image": "--image",
         "steps": "--steps", "guidance": "--guidance", "sampler": "--sampler", "frames": "--frames",
         "what": "--what", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
         "max_new_tokens": "--max-new-tokens", "stop": "--stop", "best_of": "--best-of", "judge": "--judge",
         "beam": "--beam", "voice": "--voice",
         "messages": "messages"}
ALWAYS = frozenset({"num", "seed"})
# what each field is for, said when a model refuses it
FOR = {"prompt": "text-conditional models and language models", "label": "class-conditional models",
       "image": "captioning models", "steps": "diffusion models", "guidance": "conditional diffusion models",
       "sampler": "diffusion models", "frames": "video models",
       "what": "image models (VAE: reconstructions, interpolation; diffusion: trajectory)",
       "temperature": "text models", "top_k": "language models", "top_p": "language models and captioners",
       "beam": "captioners (beam search)", "voice": "text-to-speech models",
       "max_new_tokens": "language models", "stop": "language models", "best_of": "language models",
       "judge": "best-of-N sampling (--best-of)", "messages": "chat models (a GPT tuned on sft or preferences data)"}
MAX_BEST_OF = 1024


@dataclass(frozen=True)
class Request:
    """What to generate. None (or the empty tuple, or what="samples") means "not given": the model's default."""
    num: int | None = None               # how many samples (default: DEFAULT_NUM of the kind)
    seed: int = 0
    prompt: str | None = None            # text-conditional models and language models
    label: int | None = None             # class-conditional models
    image: tuple = ()                    # captioners: what to caption, each a file path, file bytes or a uint8 array
    steps: int | None = None             # diffusion sampler steps
    guidance: float | None = None        # classifier-free guidance scale
    sampler: str | None = None           # diffusion sampler name
    frames: int | None = None            # video: frames per clip
    what: str = "samples"                # samples | reconstructions | interpolation (VAE) | trajectory (diffusion)
    temperature: float | None = None     # language models ...
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    best_of: int | None = None           # best-of-N: N samples per sample asked for, the judge keeps the best
    judge: str | None = None             # "lexicon" or a reward-model run
    messages: tuple[tuple[str, str], ...] = ()     # a chat of (role, content), instead of a prompt
    beam: int | None = None              # captioners: beam search of this width
    voice: str | None = None             # text-to-speech: one of the model's voices (default: drawn per sample)

    def given(self) -> set[str]:
        """The names of the fields set to something other than 'not given'."""
        out = set()
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ALWAYS or v is None or v == () or (f.name == "what" and v == "samples"):
                continue
            out.add(f.name)
        return out


@dataclass
class Text:
    texts: list[str]
    prompts: list[str] | None = None
    images: list[str] | None = None      # captions: the name of the image each text describes
    kind = "text"


@dataclass
class Images:
    images: np.ndarray                   # uint8 (N, H, W, C), C = 1 or 3
    labels: np.ndarray | None = None     # int64 (N,) for class-conditional samples
    prompts: list[str] | None = None     # for text-conditional samples
    nrow: int | None = None              # how a grid of them reads best (trajectories, reconstructions)
    kind = "images"

    def channels_first(self):
        """uint8 (N, C, H, W), the layout the datasets score."""
        import torch

        return torch.from_numpy(self.images).permute(0, 3, 1, 2)

    def label_tensor(self):
        import torch

        return None if self.labels is None else torch.from_numpy(self.labels)


@dataclass
class Video:
    videos: np.ndarray                   # uint8 (N, T, H, W, C)
    prompts: list[str] | None = None
    kind = "video"

    def channels_first(self):
        """uint8 (N, C, T, H, W), the layout the datasets score."""
        import torch

        return torch.from_numpy(self.videos).permute(0, 4, 1, 2, 3)

    def label_tensor(self) -> None:
        return None


@dataclass
class Audio:
    audio: np.ndarray                    # float32 (N, S) in [-1, 1]
    sample_rate: int
    prompts: list[str] | None = None
    labels: np.ndarray | None = None
    spectrograms: np.ndarray | None = None   # uint8 (N, n_mels, frames), low frequencies at the bottom (.png)
    kind = "audio"


Result = Union[Text, Images, Video, Audio]


def images_result(x, labels=None, prompts=None, nrow=None) -> Images:
    """float (N, C, H, W) in [0, 1] -> Images."""
    import torch

    from aigc.io.images import to_uint8

    return Images(to_uint8(x), None if labels is None else np.asarray(torch.as_tensor(labels).cpu(), np.int64),
                  None if prompts is None else list(prompts), nrow)


def audio_result(audio, sample_rate: int, labels=None, prompts=None, spectrograms=None) -> Audio:
    """float audio (N, S) in [-1, 1] (+ uint8 spectrogram images (N, 1, H, W)) -> Audio."""
    import torch

    return Audio(np.asarray(torch.as_tensor(audio).float().cpu(), np.float32), int(sample_rate),
                 None if prompts is None else list(prompts),
                 None if labels is None else np.asarray(torch.as_tensor(labels).cpu(), np.int64),
                 None if spectrograms is None else np.asarray(spectrograms[:, 0].cpu(), np.uint8))


def video_result(x, prompts=None) -> Video:
    """float clips (N, C, T, H, W) in [0, 1] -> Video."""
    from aigc.io.images import video_to_uint8

    return Video(video_to_uint8(x), None if prompts is None else list(prompts))


def check_request(recipe, request: Request, names: dict[str, str] = FLAGS) -> None:
    """A clear error for every field the recipe does not accept, naming what it does accept, and for values out
    of range. `names`: how the caller spells each field (the CLI's flags by default; the server's JSON keys)."""
    n = {**FLAGS, **names}
    accepted = set(recipe.accepts()) | ALWAYS
    if len(recipe.WHATS) > 1:
        accepted.add("what")
    extra = sorted(request.given() - accepted, key=list(FLAGS).index)
    if extra:
        f = extra[0]
        raise AigcError(f"{', '.join(n[f] for f in extra)} {'does' if len(extra) == 1 else 'do'} not apply to "
                        f"this {recipe.describe_model()} ({n[f]} is for {FOR[f]}); it accepts "
                        f"{', '.join(n[f] for f in FLAGS if f in accepted and (names is FLAGS or f in names))}")
    if request.num is not None and request.num < 1:
        raise AigcError(f"{n['num']} must be at least 1, got {request.num}")
    for name in ("guidance", "temperature", "top_p"):
        value = getattr(request, name)
        if value is not None and not math.isfinite(value):
            raise AigcError(f"{n[name]} must be a finite number, got {value}")
    if request.temperature is not None and request.temperature < 0:
        raise AigcError(f"{n['temperature']} must be >= 0 (0 = greedy), got {request.temperature}")
    if request.top_k is not None and request.top_k < 1:
        raise AigcError(f"{n['top_k']} must be at least 1, got {request.top_k}")
    if request.top_p is not None and not 0 < request.top_p <= 1:
        raise AigcError(f"{n['top_p']} must be in (0, 1], got {request.top_p}")
    if request.guidance is not None and request.guidance < 0:
        raise AigcError(f"{n['guidance']} must be >= 0, got {request.guidance}")
    if request.max_new_tokens is not None and not 1 <= request.max_new_tokens <= MAX_NEW_TOKENS:
        raise AigcError(f"{n['max_new_tokens']} must be in 1..{MAX_NEW_TOKENS}, got {request.max_new_tokens}")
    if request.best_of is not None and not 1 <= request.best_of <= MAX_BEST_OF:
        raise AigcError(f"{n['best_of']} must be in 1..{MAX_BEST_OF}, got {request.best_of}")
    if request.judge is not None and (request.best_of or 1) < 2:
        raise AigcError(f"{n['judge']} picks the best of several samples: give {n['best_of']} N (N >= 2) with it")
    if request.messages and request.prompt is not None:
        raise AigcError(f"give a chat's messages or {n['prompt']}, not both")
    if request.what not in recipe.WHATS:
        raise AigcError(f"{n['what']} {request.what} does not apply to this {recipe.describe_model()}; "
                        f"it makes: {', '.join(recipe.WHATS)}")


def generate(recipe, request: Request, stream: Callable[[str], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> Result:
    """Check the request against the recipe's declaration, seed the global RNG, and generate.
    `stream(piece)` receives text as it is produced (text models, num = 1); `progress(done, total)` is called as
    the work advances (every token or sampler step); either may raise aigc.errors.Cancelled to stop it."""
    import torch

    check_request(recipe, request)
    torch.manual_seed(request.seed)
    with torch.no_grad():
        result = recipe.generate(request, stream=stream, progress=progress)
    if result.kind != recipe.output:
        raise AssertionError(f"{type(recipe).__name__} declared {recipe.output!r} but produced {result.kind!r}")
    return result


__all__ = ["Request", "Text", "Images", "Video", "Audio", "Result", "generate", "check_request", "KINDS",
           "DEFAULT_NUM", "images_result", "video_result", "audio_result"]
