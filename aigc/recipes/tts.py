"""Text-to-speech recipe: the FastSpeech-2-style model of models/tts.py on the `speech` data, then Griffin-Lim.

Why durations and not attention: the small-data failure users of attention TTS (Tacotron 2) report most is an
alignment that never becomes diagonal; `speech` knows every word's frames, so the model learns durations directly
and has no alignment to find (docs/speech.md). Sampling draws a training voice and its pitch, speed and loudness for
each utterance from the request's seed; the log-mels become audio by Griffin-Lim. `aigc eval` speaks the eval
split's held-out word pairs and lets the dataset's word recogniser score them (`SpeechData.score_result`)."""

from __future__ import annotations

from pathlib import Path

import torch

from aigc.config import RunConfig
from aigc.errors import AigcError
from aigc.generation import DEFAULT_NUM, audio_result
from aigc.models.tts import TTS, TTSConfig
from aigc.recipes.base import Recipe

EVAL_PROMPTS = ("three red circles", "seven three one nine", "a large green triangle in the top left",
                "a small yellow circle", "zero one two three four five six seven")


class TTSRecipe(Recipe):
    family = "tts"
    output = "audio"
    ModelConfig = TTSConfig
    EVAL_SAMPLES = 500

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.model = TTS(cfg.model)
        self.modules = {"tts": self.model}

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        if m.d_model % m.heads:
            raise AigcError(f"model.d_model ({m.d_model}) must be a multiple of model.heads ({m.heads})")
        if min(m.enc_layers, m.dec_layers, m.kernel, m.ff_mult, m.max_token_frames, m.griffin_lim_iters) < 1:
            raise AigcError("model.enc_layers, dec_layers, kernel, ff_mult, max_token_frames and griffin_lim_iters "
                            "must be at least 1")
        if not 0 <= m.voice_dropout <= 1 or not 0 <= m.dropout < 1:
            raise AigcError("model.voice_dropout must be in [0, 1] and model.dropout in [0, 1)")

    @staticmethod
    def load_data(cfg, run_dir: Path | None = None):
        from aigc.data import check_kind, load_dataset

        check_kind(cfg.data.name, "speech", cfg.family)
        data = load_dataset(cfg.data)
        m = cfg.model
        m.vocab_size, m.n_voices, m.n_mels = len(data.tokens), len(data.voices), data.mel.n_mels
        m.max_words = cfg.data.max_words
        return data

    @staticmethod
    def make_batcher(data, cfg):
        from aigc.data import Batcher

        return Batcher(data, cfg.data.batch_size, cfg.train.seed)

    # ---------------------------------------------------------------- trainer hooks
    def param_groups(self):
        return {"tts": list(self.model.parameters())}

    def ema_modules(self):
        return self.modules

    def _to(self, batch: dict) -> dict:
        dev = self.device_of()
        return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def train_step(self, batch, opt):
        out = self.model.loss(self._to(batch), self.cfg.model.voice_dropout)
        opt.update("tts", out["loss"])
        return {"loss": out["loss"].detach(), "mel_loss": out["mel_loss"], "duration_loss": out["duration_loss"]}

    def evaluate(self, data, max_batches=None, num=None) -> dict[str, float]:
        """Mel (L1 + MSE) and duration losses on the eval split with its true durations (held-out voices, so the
        model's "any voice" embedding)."""
        limit = num if max_batches is None else max_batches * 64
        sums, n = {"mel_loss": 0.0, "duration_loss": 0.0}, 0
        for batch in data.eval_batches(64, limit):
            out = self.model.loss(self._to(batch))
            for k in sums:
                sums[k] += out[k].item() * len(batch["text"])
            n += len(batch["text"])
        return {"eval_" + k: round(v / max(n, 1), 5) for k, v in sums.items()} | {"num_eval": n}

    def save_samples(self, path: Path) -> None:
        """Spectrograms of a few fixed texts (the same voices every time) and, beside them, their WAV files."""
        from aigc.io.samples import write_result

        torch.manual_seed(1234)
        result = self.speak(list(EVAL_PROMPTS), torch.Generator().manual_seed(1234))
        write_result(result, Path(path).with_suffix(".png"))
        write_result(result, Path(path).with_suffix(".wav"))

    # ---------------------------------------------------------------- generation
    def accepts(self) -> set[str]:
        return {"prompt", "voice"}

    def describe_model(self) -> str:
        return "text-to-speech model"

    def voices(self, n: int, generator: torch.Generator, name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n training voices (`name` for all, else drawn) with (pitch, speed, loudness) drawn uniformly over the
        data's ranges."""
        from aigc.data.speech import TRAIN_VOICES

        voice = torch.randint(self.cfg.model.n_voices, (n,), generator=generator)
        params = torch.rand(n, 3, generator=generator)
        if name is not None:
            if name not in TRAIN_VOICES:
                raise AigcError(f"unknown voice {name!r}: this model speaks with {', '.join(TRAIN_VOICES)}")
            voice = torch.full((n,), TRAIN_VOICES.index(name))
        return voice, params

    def speak(self, texts: list[str], generator: torch.Generator, voice_name: str | None = None):
        """Texts -> an Audio result: tokens, log-mels by the model, audio by Griffin-Lim (16 kHz)."""
        from aigc.data.audio import to_image
        from aigc.data.speech import SAMPLE_RATE, SPEECH_MEL, encode_text, text_words

        rows = [encode_text(t, self.cfg.model.max_words) for t in texts]
        voice, params = self.voices(len(texts), generator, voice_name)
        dev = self.device_of()
        tokens = torch.full((len(rows), max(map(len, rows))), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = torch.tensor(r)
        mels, audio, lengths = [], [], []
        for i in range(0, len(rows), 64):
            mel, frames = self.model.synthesize(tokens[i:i + 64].to(dev), voice[i:i + 64].to(dev),
                                                params[i:i + 64].to(dev))
            mel = mel.float().cpu()
            wave = SPEECH_MEL.decode(mel.transpose(1, 2), iters=self.cfg.model.griffin_lim_iters,
                                     samples=(mel.shape[1] - 1) * SPEECH_MEL.hop)
            for m, w, f in zip(mel, wave, frames.tolist()):
                mels.append(m)
                audio.append(w[:max(1, (f - 1) * SPEECH_MEL.hop)])
                lengths.append(f)
        longest = max(len(a) for a in audio)
        padded = torch.stack([torch.nn.functional.pad(a, (0, longest - len(a))) for a in audio])
        frames = max(lengths)
        spec = torch.stack([torch.nn.functional.pad(m[:f], (0, 0, 0, frames - f)) for m, f in zip(mels, lengths)])
        texts = [" ".join(text_words(t)) for t in texts]
        return audio_result(padded, SAMPLE_RATE, prompts=texts, spectrograms=to_image(spec.transpose(1, 2)))

    def random_texts(self, n: int, generator: torch.Generator) -> list[str]:
        import numpy as np

        from aigc.data.speech import random_text

        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        return [" ".join(random_text(rng, self.cfg.model.max_words)) for _ in range(n)]

    def generate(self, request, stream=None, progress=None):
        g = torch.Generator().manual_seed(request.seed)
        num = request.num or (1 if request.prompt is not None else DEFAULT_NUM["audio"])
        texts = [request.prompt] * num if request.prompt is not None else self.random_texts(num, g)
        return self.speak(texts, g, request.voice)

    def generate_for_eval(self, data, num: int):
        """`num` utterances of the eval split's texts that hold a word pair never trained on, in turn."""
        texts = data.holdout_texts()
        return self.speak([texts[i % len(texts)] for i in range(num)], torch.Generator().manual_seed(0))

    def full_eval(self, data, num=None, k=None, progress=None) -> dict:
        return {**self.evaluate(data, num=num),
                "note": "eval losses use the true durations; sample_quality speaks held-out word pairs in training "
                        "voices and lets the word recogniser transcribe them"}
