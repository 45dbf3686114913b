"""What recipes share: how a family loads its data, batches it and keeps run artifacts.

Image families inherit `ImageRecipe` (uint8 image datasets, the image Batcher), video families
`VideoRecipe` (clips generated on the fly); text families inherit `TextRecipe` (a token stream, random
windows, the tokenizer saved in the run)."""

from __future__ import annotations

from pathlib import Path

import torch


class Recipe:
    """What every family declares for the trainer (see train.TrainerHooks) and for the generation
    contract (aigc/generation.py): the kind of result it produces, the request fields it accepts and
    the `--what` variants it makes."""
    family: str
    output: str                          # text | images | video | audio
    WHATS: tuple = ("samples",)          # the request's `what` values this family makes
    EVAL_SAMPLES = 0                     # generated samples `aigc eval` scores by default (0: none)
    modules: dict
    lrs: dict | None = None              # base learning rate per parameter group (None: train.lr for all)

    @staticmethod
    def adopt_init_config(cfg, init_dir: Path, sets: list[str]) -> None:
        """--init-from RUN: take what must stay the same from that run's config (families that fine-tune)."""
        from aigc.errors import AigcError

        raise AigcError(f"--init-from is not supported for the {cfg.family} family")

    def init_from(self, init_dir: Path) -> None:
        raise NotImplementedError

    def save_artifacts(self, run_dir: Path, data) -> None:
        """Files beside the checkpoint that sampling needs (a tokenizer, prompts); none by default."""

    def load_artifacts(self, run_dir: Path) -> None:
        """Read what `save_artifacts` wrote."""

    def device_of(self) -> torch.device:
        return next(iter(self.modules.values())).parameters().__next__().device

    def accepts(self) -> set[str]:
        """The request fields (beyond num and seed) this trained model takes."""
        return set()

    def describe_model(self) -> str:
        return f"{self.family} model"

    def generate(self, request, stream=None, progress=None):
        """A Result of kind `self.output` for `request` (already checked by aigc.generation.generate)."""
        raise NotImplementedError

    def output_size(self) -> str | None:
        """WIDTHxHEIGHT of the images or frames it makes (None for text and audio)."""
        return None

    def text_engine(self, slots: int, threads=None):
        """A continuous-batching text decoder (aigc/recipes/textgen.TextEngine) when the model has one, else None:
        a server then decodes this model's requests one at a time through `generate`."""
        return None

    def chat_prompt(self, messages: list[tuple[str, str]]) -> str:
        """The prompt a chat of (role, content) messages becomes, for models fine-tuned to answer one."""
        from aigc.errors import AigcError

        raise AigcError(f"this {self.describe_model()} is not a chat model (chat needs a GPT tuned on sft or "
                        "preferences data)")

    def generate_for_eval(self, data, num: int):
        """`num` samples for the dataset's sample-quality metrics (only when EVAL_SAMPLES > 0)."""
        raise NotImplementedError


class ImageRecipe(Recipe):
    """Image families. They also train on audio data held as log-mel images (spoken-digits): their samples then
    become audio through the dataset's inversion (`result`), and `output` is "audio"."""
    data_key = "image"                   # the batch entry holding the data
    EVAL_SAMPLES = 10000

    @property
    def output(self) -> str:
        from aigc.data import entry

        return "audio" if entry(self.cfg.data.name).kind == "audio" else "images"

    def result(self, x: torch.Tensor, labels=None, prompts=None, nrow=None):
        """Samples float (N, C, H, W) in [0, 1] -> the Images result, or Audio for a model of audio data."""
        from aigc.generation import audio_result, images_result

        if self.output != "audio":
            return images_result(x, labels, prompts, nrow)
        if nrow is not None:
            from aigc.errors import AigcError

            raise AigcError(f"this {self.describe_model()} makes audio; --what variants other than samples show "
                            "images and apply to image models")
        from aigc.data import to_audio
        from aigc.io.images import to_uint8

        audio, rate = to_audio(self.cfg.data.name, x)
        return audio_result(audio, rate, labels, prompts, torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2))

    @staticmethod
    def load_data(cfg, run_dir: Path | None = None):
        """Load the dataset and write its resolved image shape into the config (to rebuild the model)."""
        from aigc.data import check_kind, load_dataset

        check_kind(cfg.data.name, ("images", "audio"), cfg.family)
        data = load_dataset(cfg.data)
        c, h, _ = data.image_shape
        cfg.data.channels, cfg.data.image_size = c, h
        return data

    @staticmethod
    def set_condition(cfg, data) -> None:
        """Conditional models (model.cond = none | class | text): check that the data has what the
        condition needs and write the number of classes or the caption vocabulary into the model config."""
        from aigc.errors import AigcError

        m = cfg.model
        if m.cond == "class":
            if data.num_classes < 2 or data.train.labels is None:
                raise AigcError(f"cond = class needs labelled data; '{data.name}' has no class labels")
            m.num_classes = data.num_classes
        elif m.cond == "text":
            if not data.text_vocab:
                raise AigcError(f"cond = text needs captioned data (the built-in 'shapes' or 'moving-shapes', or an "
                                f"images folder with a metadata.jsonl); '{data.name}' has none")
            m.text_vocab, m.text_tokens = list(data.text_vocab), data.text_tokens

    def condition_fields(self) -> set[str]:
        """The request field that carries this model's condition: label, prompt or none."""
        return {"class": {"label"}, "text": {"prompt"}}.get(self.cfg.model.cond, set())

    def output_size(self) -> str | None:
        size = self.cfg.data.image_size
        return f"{size}x{size}"

    def describe_model(self) -> str:
        kind = {"class": "class-conditional", "text": "text-conditional"}.get(self.cfg.model.cond, "unconditional")
        return f"{kind} {self.family} model"

    example_prompts: list[str] = []      # a captioned folder's eval captions (RUN/prompts.txt): its random prompts

    def random_prompts(self, n: int, generator=None) -> list[str]:
        """Captions of n random examples of the training data (from the global RNG without a generator); for a
        captioned folder, n drawn from its held-out captions."""
        from aigc.data import random_prompts

        if self.example_prompts:
            pick = torch.randint(len(self.example_prompts), (n,), generator=generator).tolist()
            return [self.example_prompts[i] for i in pick]
        return random_prompts(self.cfg.data.name, n, generator)

    def check_condition_args(self, label, prompt) -> None:
        """Clear errors for a --label or --prompt value this model cannot take (out of range, no known word)."""
        from aigc.errors import AigcError

        m = self.cfg.model
        if label is not None and not 0 <= label < m.num_classes:
            raise AigcError(f"--label {label} is out of range: this model knows classes 0..{m.num_classes - 1}")
        if prompt is not None:
            self.check_prompt(self.vocab, prompt)

    def requested_conditions(self, num: int, label=None, prompt=None) -> dict:
        """Conditions for `num` samples of a conditional model: the given label / prompt for all of them,
        else classes in turn / random captions ({} when model.cond = none)."""
        m = self.cfg.model
        if m.cond == "class":
            return {"labels": torch.full((num,), label) if label is not None else torch.arange(num) % m.num_classes}
        if m.cond == "text":
            return {"prompts": [prompt] * num if prompt is not None else self.random_prompts(num)}
        return {}

    def eval_conditions(self, data, num: int):
        """(labels, prompts) for `num` samples scored against the data: classes in equal shares
        (class-conditional) or the eval split's full captions in turn (text-conditional)."""
        m = self.cfg.model
        labels = prompts = None
        if m.cond == "class":
            labels = torch.arange(num) % m.num_classes
        elif m.cond == "text":
            caps = data.eval.captions(torch.arange(len(data.eval)))
            prompts = [caps[i % len(caps)] for i in range(num)]
        return labels, prompts

    @staticmethod
    def check_prompt(vocab, prompt: str) -> None:
        from aigc.errors import AigcError

        why = vocab.problem(prompt)
        if why:
            raise AigcError(why)

    @staticmethod
    def make_batcher(data, cfg):
        from aigc.data import Batcher

        return Batcher(data, cfg.data.batch_size, cfg.train.seed)

    PROMPTS_FILE = "prompts.txt"

    def save_artifacts(self, run_dir: Path, data) -> None:
        """Files beside the checkpoint that sampling needs: for a text-conditional model of a captioned folder, its
        held-out captions (one per line), the prompts of training grids and of `aigc sample` without --prompt."""
        if getattr(self.cfg.model, "cond", "none") == "text" and data.text_tokens == "bpe":
            self.example_prompts = data.eval.captions(torch.arange(len(data.eval)))
            (Path(run_dir) / self.PROMPTS_FILE).write_text("\n".join(self.example_prompts) + "\n", encoding="utf-8")

    def load_artifacts(self, run_dir: Path) -> None:
        path = Path(run_dir) / self.PROMPTS_FILE
        if path.is_file():
            self.example_prompts = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]


class VideoRecipe(ImageRecipe):
    """Video families: clips (B, C, T, H, W) from aigc/data/video.py, captioned on moving-shapes.
    `aigc sample` writes an animated GIF grid or an npz of `videos`."""
    output = "video"                     # (replaces ImageRecipe's property)
    data_key = "video"
    EVAL_SAMPLES = 500

    @staticmethod
    def frames_per_step(cfg) -> int:
        """Frames the network trains on per step (benchmarks report frames/s): whole clips by default."""
        return cfg.data.batch_size * cfg.data.frames

    @staticmethod
    def load_data(cfg, run_dir: Path | None = None):
        from aigc.data import check_kind, load_dataset

        check_kind(cfg.data.name, "video", cfg.family)
        data = load_dataset(cfg.data)
        cfg.data.channels, cfg.data.image_size = data.channels, data.size
        return data

    @staticmethod
    def video_shape(cfg) -> tuple[int, int, int, int]:
        return cfg.data.channels, cfg.data.frames, cfg.data.image_size, cfg.data.image_size

    def check_frames(self, frames: int | None) -> None:
        from aigc.errors import AigcError

        d = self.cfg.data
        if frames is not None and frames != d.frames:
            raise AigcError(f"this model was trained on {d.frames}-frame clips of {d.image_size}x{d.image_size}; "
                            f"it cannot make {frames}-frame clips (train one with --set frames={frames})")

    @staticmethod
    def make_batcher(data, cfg):
        from aigc.data.video import VideoBatcher

        return VideoBatcher(data, cfg.data.batch_size, cfg.train.seed)

    def save_clips(self, path: Path, videos: torch.Tensor, nrow: int = 4) -> None:
        """Training samples: an animated GIF grid at path.gif and, beside it, a PNG of every other frame of
        the first clips (one clip per row) to look at without a GIF viewer."""
        from aigc.io.images import save_gif, save_grid, video_to_uint8

        path = Path(path)
        save_gif(path.with_suffix(".gif"), video_to_uint8(videos), nrow=nrow)
        rows = videos[:8, :, ::2].transpose(1, 2)                       # (n, T/2, C, H, W)
        save_grid(path.with_suffix(".png"), rows.flatten(0, 1), nrow=rows.shape[1])


class TokenizerRecipe(Recipe):
    """Families that make text through a tokenizer kept in the run (RUN/tokenizer.json), so that sampling decodes
    exactly: the text families and the captioner. The model config has `vocab_size`."""
    output = "text"
    TOKENIZER_FILE = "tokenizer.json"
    tokenizer = None

    @staticmethod
    def set_vocab_size(cfg, tokenizer) -> None:
        """Write the tokenizer's size into the model config; a clear error when a trained model expects another."""
        from aigc.errors import AigcError

        if cfg.model.vocab_size and cfg.model.vocab_size != tokenizer.vocab_size:
            raise AigcError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model expects "
                            f"{cfg.model.vocab_size}")
        cfg.model.vocab_size = tokenizer.vocab_size

    def save_artifacts(self, run_dir: Path, data) -> None:
        self.tokenizer = data.tokenizer
        (Path(run_dir) / self.TOKENIZER_FILE).write_text(data.tokenizer.to_json(), encoding="utf-8")

    def load_artifacts(self, run_dir: Path) -> None:
        from aigc.data.tokenizers import load_tokenizer

        self.tokenizer = load_tokenizer(Path(run_dir) / self.TOKENIZER_FILE)


class TextRecipe(TokenizerRecipe):
    """Families that train on a token stream (text, code, sft, preferences). `window(cfg)` is the number of input
    tokens per example; batches hold window + 1 tokens."""

    @staticmethod
    def window(cfg) -> int:
        raise NotImplementedError

    @classmethod
    def load_data(cls, cfg, run_dir: Path | None = None):
        import importlib

        from aigc.data import check_kind, entry

        check_kind(cfg.data.name, "text", cfg.family)
        tok = Path(run_dir) / cls.TOKENIZER_FILE if run_dir else None
        data = importlib.import_module(entry(cfg.data.name).module).load(cfg.data, cls.window(cfg), tok)
        cls.set_vocab_size(cfg, data.tokenizer)
        return data

    @staticmethod
    def make_batcher(data, cfg):
        from aigc.data.text import TokenBatcher

        return TokenBatcher(data, cfg.data.batch_size, cfg.train.seed)
