"""`spoken-digits` and `speech`: synthetic speech made with the espeak-ng synthesiser on first use (DESIGN.md).

Every utterance is spoken word by word: each word is synthesised on its own (espeak-ng, 22.05 kHz, resampled to
16 kHz), its silence trimmed, and the words joined with short random pauses. So the word timings are known
exactly, which is what the text-to-speech family trains its durations on (FastSpeech 2 takes them from a forced
aligner; here the data knows them). An utterance's voice (one of espeak's variants), pitch, speed and loudness are
drawn from a generator seeded by (dataset seed, split, index), so the data is the same on every machine, whatever
the number of worker threads. Voices in HELD_OUT_VOICES speak only the eval split.

- `spoken-digits` (the SC09 task, made locally): one digit word placed at a random offset in 1 s of audio, label
  0-9; held as 32 x 32 log-mel images (32 mel bands x 32 frames of 31 ms), so the image families (diffusion, GAN)
  train on them unchanged and their samples become audio by Griffin-Lim (`to_audio`).
- `speech`: 1 to 8 words from a small vocabulary (the digit words, the shapes captions' words, plural shapes),
  with the transcript as caption and the frames of every word and pause; texts holding a pair in HOLDOUT_PAIRS
  are never trained on (the eval split has them). Log-mels of 64 bands in 16 ms frames.

This is synthesised speech, not human speech; every figure made on it says so."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aigc.config import DataConfig
from aigc.data import Dataset, ImageConfig, Split, data_root, eval_batches
from aigc.data.audio import MelSpec, from_image, resample, to_image
from aigc.data.shapes import COLOR_NAMES, SHAPES, SIZE_NAMES
from aigc.data.shapes import random_prompts as shape_captions
from aigc.errors import AigcError
from aigc.io.audio import trim_padding

VERSION = 1                          # bump when the making of the data changes (the cache key has it)
SAMPLE_RATE = 16000
ESPEAK_RATE = 22050
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_VOICES = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "f5", "klatt", "klatt2", "klatt4", "adam",
                "Andy", "david", "john", "max", "paul", "Mike")
HELD_OUT_VOICES = ("m7", "f4", "klatt3", "robert")
PLURALS = tuple(s + "s" for s in SHAPES)
WORDS = tuple(sorted({*DIGITS, "a", "in", "the", "shape", "top", "bottom", "left", "right", "center", *SHAPES,
                      *PLURALS, *COLOR_NAMES, *SIZE_NAMES}))
HOLDOUT_PAIRS = (("green", "triangle"), ("yellow", "circle"), ("seven", "three"), ("one", "nine"))
PITCH = (25, 75)                     # espeak -p range
SPEED = (130, 200)                   # words per minute (espeak -s)
LOUDNESS = (0.25, 0.9)               # peak amplitude of an utterance
DIGIT_MEL = MelSpec(n_fft=1024, hop=500, n_mels=32)
SPEECH_MEL = MelSpec(n_fft=1024, hop=256, n_mels=64)
DIGIT_SAMPLES = SAMPLE_RATE          # 1 s
DIGIT_FRAMES = 32


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise AigcError("the spoken-digits and speech data are made with the espeak-ng synthesiser, which is not "
                        "installed: apt-get install espeak-ng (Debian/Ubuntu) or brew install espeak-ng (macOS)")
    return path


# ---------------------------------------------------------------- synthesis
@dataclass(frozen=True)
class Voice:
    """How one utterance is spoken."""
    variant: str
    pitch: int
    speed: int
    loudness: float


def draw_voice(rng: np.random.Generator, voices: tuple[str, ...]) -> Voice:
    return Voice(voices[rng.integers(len(voices))], int(rng.integers(PITCH[0], PITCH[1] + 1)),
                 int(rng.integers(SPEED[0], SPEED[1] + 1)), float(rng.uniform(*LOUDNESS)))


def draw_voices(seed: int, tag: int, split: str, n: int) -> list[Voice]:
    """The voices of a split's n utterances, each from its own generator (seed, tag, split, index)."""
    return [draw_voice(np.random.default_rng([seed, tag, split == "eval", i]), _voices(split)) for i in range(n)]


def synth_word(word: str, voice: Voice) -> np.ndarray:
    """One word at 16 kHz, float32, silence trimmed (at 40 dB under its peak, 5 ms kept either side)."""
    cmd = [espeak(), "-v", f"en-us+{voice.variant}", "-p", str(voice.pitch), "-s", str(voice.speed), "--stdout", word]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    i = raw.find(b"data")
    if i < 0:
        raise AigcError(f"espeak-ng gave no audio for '{word}' ({' '.join(cmd[1:])})")
    pcm = np.frombuffer(raw[i + 8:len(raw) - (len(raw) - i - 8) % 2], "<i2").astype(np.float32) / 32768
    x = resample(torch.from_numpy(pcm), ESPEAK_RATE, SAMPLE_RATE).numpy()
    loud = np.flatnonzero(np.abs(x) > 0.01 * max(np.abs(x).max(), 1e-6))
    if len(loud) == 0:
        return np.zeros(SAMPLE_RATE // 10, np.float32)
    pad = SAMPLE_RATE // 200
    return x[max(0, loud[0] - pad):loud[-1] + pad]


def synth_all(jobs: list[tuple[str, Voice]], desc: str) -> list[np.ndarray]:
    """Synthesise (word, voice) jobs on all cores (espeak-ng runs as processes), with a progress bar."""
    from tqdm import tqdm

    espeak()
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        return list(tqdm(pool.map(lambda job: synth_word(*job), jobs), total=len(jobs), desc=desc, unit="word",
                         file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30))


def peak(x: np.ndarray, loudness: float) -> np.ndarray:
    return (x * (loudness / max(float(np.abs(x).max()), 1e-6))).astype(np.float32)


# ---------------------------------------------------------------- texts
def has_holdout(words: list[str]) -> bool:
    return any(pair in HOLDOUT_PAIRS for pair in zip(words, words[1:]))


def random_text(rng: np.random.Generator, max_words: int) -> list[str]:
    """Digit strings, shapes captions, or counts of coloured shapes ("three red circles")."""
    kind = rng.random()
    if kind < 0.4:
        return [DIGITS[i] for i in rng.integers(10, size=rng.integers(1, max_words + 1))]
    if kind < 0.8:
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        words = shape_captions(1, g)[0].split()
        if len(words) <= max_words:
            return words
    words = [DIGITS[rng.integers(2, 10)]] + ([SIZE_NAMES[rng.integers(2)]] if rng.random() < 0.3 else [])
    return (words + [COLOR_NAMES[rng.integers(len(COLOR_NAMES))], PLURALS[rng.integers(3)]])[:max_words]


def texts_for(split: str, n: int, seed: int, max_words: int) -> list[list[str]]:
    """Training texts never hold a pair of HOLDOUT_PAIRS; half the eval texts do (the other half are drawn as for
    training)."""
    rng = np.random.default_rng([seed, 7, 0 if split == "train" else 1])
    out = []
    while len(out) < n:
        words = random_text(rng, max_words)
        want_holdout = split == "eval" and len(out) % 2 == 0
        if want_holdout and not has_holdout(words):
            a, b = HOLDOUT_PAIRS[rng.integers(len(HOLDOUT_PAIRS))]
            words = ([DIGITS[rng.integers(10)]] if rng.random() < 0.5 else []) + [a, b]
            words = words + (["in", "the", "center"] if b in SHAPES and rng.random() < 0.5 else [])
            words = words[-max_words:] if len(words) > max_words else words
        if has_holdout(words) != want_holdout:
            continue
        out.append(words)
    return out


# ---------------------------------------------------------------- the datasets
@dataclass
class SpokenDigitsConfig(ImageConfig):
    """Options of spoken-digits; image_size and channels are its log-mel images' own (32, 1) and say so when set
    to anything else."""
    num_train: int = 5000
    num_eval: int = 500
    seed: int = 0
    batch_size: int = 64


@dataclass
class SpeechConfig(DataConfig):
    num_train: int = 3000
    num_eval: int = 500
    seed: int = 0
    max_words: int = 8
    batch_size: int = 32


def cache_path(kind: str, cfg, extra: str = "") -> Path:
    key = f"{kind}-v{VERSION}-{cfg.num_train}-{cfg.num_eval}-{cfg.seed}{extra}"
    return data_root() / "speech" / f"{key}.npz"


def _voices(split: str) -> tuple[str, ...]:
    return TRAIN_VOICES if split == "train" else HELD_OUT_VOICES


def make_digits(cfg: SpokenDigitsConfig) -> dict[str, np.ndarray]:
    """Both splits of spoken-digits as arrays: log-mel images uint8 (N, 1, 32, 32), labels, voices."""
    out = {}
    for split, n in (("train", cfg.num_train), ("eval", cfg.num_eval)):
        labels = np.arange(n) % 10
        voices = draw_voices(cfg.seed, 1, split, n)
        words = synth_all([(DIGITS[k], v) for k, v in zip(labels, voices)], f"spoken-digits {split} (espeak-ng)")
        audio = np.zeros((n, DIGIT_SAMPLES), np.float32)
        for i, (w, v) in enumerate(zip(words, voices)):
            w = w[:DIGIT_SAMPLES]
            start = np.random.default_rng([cfg.seed, 2, split == "eval", i]).integers(DIGIT_SAMPLES - len(w) + 1)
            audio[i, start:start + len(w)] = peak(w, v.loudness)
        out[f"{split}_images"] = digit_images(torch.from_numpy(audio)).numpy()
        out[f"{split}_labels"] = labels.astype(np.int64)
        out[f"{split}_voices"] = np.array([v.variant for v in voices])
    return out


def digit_images(audio: torch.Tensor) -> torch.Tensor:
    """1 s clips (N, 16000) -> log-mel images uint8 (N, 1, 32, 32)."""
    mel = torch.cat([DIGIT_MEL.encode(audio[i:i + 500]) for i in range(0, len(audio), 500)])
    return to_image(mel[..., :DIGIT_FRAMES])


def to_audio(x: torch.Tensor) -> torch.Tensor:
    """Generated spoken-digit images float (N, 1, 32, 32) in [0, 1] -> audio (N, 16000) by Griffin-Lim."""
    mel = from_image(x)
    mel = torch.cat([mel, mel[..., -1:]], -1)                 # the 33rd frame the 1 s centred STFT has
    return torch.cat([DIGIT_MEL.decode(mel[i:i + 256], samples=DIGIT_SAMPLES) for i in range(0, len(mel), 256)])


class SpokenDigits(Dataset):
    """Spoken digits as log-mel images; generated samples are scored as audio (`score_result`): their log-mels are
    computed again from the waveform and read by the digit classifier (FID on its features, class accuracy)."""
    kind = "audio"

    def describe(self) -> str:
        return (f"{len(self.train)} spoken digits (synthesised by espeak-ng, {len(TRAIN_VOICES)} voices; eval: "
                f"{len(HELD_OUT_VOICES)} held-out voices) as 32x32 log-mel images")

    def score_result(self, result) -> dict:
        audio = torch.from_numpy(np.asarray(result.audio, np.float32))
        if result.sample_rate != SAMPLE_RATE or audio.shape[1] != DIGIT_SAMPLES:
            raise AigcError(f"spoken-digit samples are 1 s at {SAMPLE_RATE} Hz; got {audio.shape[1]} samples at "
                            f"{result.sample_rate} Hz")
        out = self.score(digit_images(audio), None if result.labels is None else torch.from_numpy(result.labels))
        return {**out, "features": "digit-classifier features of log-mels recomputed from the generated audio "
                                   "(synthesised speech; not an Inception or speech-model FID)"}


def load_cached(path: Path, make) -> dict[str, np.ndarray]:
    if path.is_file():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return arrays


def check_sizes(cfg) -> None:
    if cfg.num_train < 10 or cfg.num_eval < 10:
        raise AigcError(f"data.num_train and data.num_eval must be at least 10 for {cfg.name}")


def load_digits(cfg: SpokenDigitsConfig) -> SpokenDigits:
    check_sizes(cfg)
    if cfg.image_size not in (0, DIGIT_FRAMES) or cfg.channels not in (0, 1) or cfg.binarize != "none":
        raise AigcError(f"spoken-digits are {DIGIT_FRAMES}x{DIGIT_FRAMES} log-mel images with one channel; "
                        "data.image_size, data.channels and data.binarize cannot change them")
    a = load_cached(cache_path("spoken-digits", cfg), lambda: make_digits(cfg))
    split = {s: Split(torch.from_numpy(a[f"{s}_images"]), torch.from_numpy(a[f"{s}_labels"]))
             for s in ("train", "eval")}
    return SpokenDigits("spoken-digits", split["train"], split["eval"], num_classes=10, class_names=list(DIGITS),
                        reference_split="eval split (held-out voices)")


# ---------------------------------------------------------------- speech
SIL = "<sil>"
TOKENS = (SIL, *WORDS)               # token 0 = a pause; words from 1


def make_speech(cfg: SpeechConfig) -> dict[str, np.ndarray]:
    """Both splits of `speech`: per utterance its log-mel (64 x frames, uint8 0..255), its tokens (pauses between
    words) with their frames, its voice, and its text."""
    out = {}
    hop = SPEECH_MEL.hop
    for split, n in (("train", cfg.num_train), ("eval", cfg.num_eval)):
        texts = texts_for(split, n, cfg.seed, cfg.max_words)
        voices = draw_voices(cfg.seed, 3, split, n)
        jobs = [(w, v) for words, v in zip(texts, voices) for w in words]
        sounds = iter(synth_all(jobs, f"speech {split} (espeak-ng)"))
        mels, tokens, frames = [], [], []
        for i, (words, v) in enumerate(zip(texts, voices)):
            rng = np.random.default_rng([cfg.seed, 4, split == "eval", i])
            pieces, toks = [], []
            for k, w in enumerate(words):
                pause = int((rng.uniform(0.08, 0.16) if k == 0 else rng.uniform(0.03, 0.12)) * SAMPLE_RATE)
                pieces += [np.zeros(pause, np.float32), next(sounds)]
                toks += [0, TOKENS.index(w)]
            pieces.append(np.zeros(int(rng.uniform(0.08, 0.16) * SAMPLE_RATE), np.float32))
            toks.append(0)
            ends = np.cumsum([len(p) for p in pieces])
            audio = peak(np.concatenate(pieces), v.loudness)
            mel = SPEECH_MEL.encode(torch.from_numpy(audio)[None])[0]
            bounds = np.minimum(np.round(ends / hop).astype(np.int64), mel.shape[1])
            bounds[-1] = mel.shape[1]
            mels.append((mel.T * 255).round().to(torch.uint8).numpy())
            tokens.append(np.array(toks, np.int64))
            frames.append(np.diff(np.concatenate([[0], bounds])))
        out[f"{split}_mel"] = np.concatenate(mels)
        out[f"{split}_mel_len"] = np.array([len(m) for m in mels], np.int64)
        out[f"{split}_tokens"] = np.concatenate(tokens)
        out[f"{split}_frames"] = np.concatenate(frames)
        out[f"{split}_token_len"] = np.array([len(t) for t in tokens], np.int64)
        out[f"{split}_voice"] = np.array([_voices(split).index(v.variant) for v in voices], np.int64)
        out[f"{split}_voice_params"] = np.array([[v.pitch, v.speed, v.loudness] for v in voices], np.float32)
        out[f"{split}_text"] = np.array([" ".join(t) for t in texts])
    return out


class Utterances:
    """One split of `speech`: variable-length utterances kept concatenated; `batch` pads them."""

    def __init__(self, a: dict, split: str):
        self.mel = torch.from_numpy(a[f"{split}_mel"])                       # uint8 (sum T, 64)
        self.mel_len = torch.from_numpy(a[f"{split}_mel_len"])
        self.tokens = torch.from_numpy(a[f"{split}_tokens"])
        self.frames = torch.from_numpy(a[f"{split}_frames"])
        self.token_len = torch.from_numpy(a[f"{split}_token_len"])
        self.voice = torch.from_numpy(a[f"{split}_voice"])
        self.voice_params = torch.from_numpy(a[f"{split}_voice_params"])
        self.texts = [str(t) for t in a[f"{split}_text"]]
        self.mel_start = torch.cat([torch.zeros(1, dtype=torch.int64), self.mel_len.cumsum(0)[:-1]])
        self.token_start = torch.cat([torch.zeros(1, dtype=torch.int64), self.token_len.cumsum(0)[:-1]])

    def __len__(self) -> int:
        return len(self.texts)

    def mels(self, index) -> list[torch.Tensor]:
        """Log-mels (frames, 64) in [0, 1] of utterances `index`."""
        return [self.mel[s:s + n].float().div(255) for s, n in zip(self.mel_start[index].tolist(),
                                                                      self.mel_len[index].tolist())]

    def batch(self, index: torch.Tensor, *_ignored) -> dict:
        """{"mel": (B, T, 64) zero-padded, "mel_len", "tokens" / "frames": (B, L) padded with -1 / 0, "token_len",
        "voice", "voice_params" (pitch, speed, loudness scaled to [0, 1]), "text"}."""
        from torch.nn.utils.rnn import pad_sequence

        starts, lens = self.token_start[index].tolist(), self.token_len[index].tolist()
        return {"mel": pad_sequence(self.mels(index), batch_first=True), "mel_len": self.mel_len[index],
                "tokens": pad_sequence([self.tokens[s:s + n] for s, n in zip(starts, lens)], True, -1),
                "frames": pad_sequence([self.frames[s:s + n] for s, n in zip(starts, lens)], True, 0),
                "token_len": self.token_len[index], "voice": self.voice[index],
                "voice_params": scale_voice(self.voice_params[index]),
                "text": [self.texts[i] for i in index.tolist()]}


def scale_voice(params: torch.Tensor) -> torch.Tensor:
    """(pitch, speed, loudness) -> each in [0, 1] over its range."""
    lo = torch.tensor([PITCH[0], SPEED[0], LOUDNESS[0]])
    hi = torch.tensor([PITCH[1], SPEED[1], LOUDNESS[1]])
    return (params - lo) / (hi - lo)


@dataclass
class SpeechData:
    """The `speech` dataset: train split (TRAIN_VOICES, no held-out word pairs) and eval split (HELD_OUT_VOICES,
    half of its texts with a held-out pair)."""
    name: str
    train: Utterances
    eval: Utterances
    binarize = False
    caption_dropout = 0.0
    note = ""
    mel = SPEECH_MEL
    words = WORDS
    tokens = TOKENS
    voices = TRAIN_VOICES

    def describe(self) -> str:
        return (f"{len(self.train)} utterances synthesised by espeak-ng ({len(TRAIN_VOICES)} voices, "
                f"{len(WORDS)} words; eval: {len(self.eval)} by {len(HELD_OUT_VOICES)} held-out voices)")

    def holdout_texts(self) -> list[str]:
        """The eval split's texts that hold a pair never trained on."""
        return [t for t in self.eval.texts if has_holdout(t.split())]

    def eval_batches(self, batch_size: int, limit: int | None = None):
        return eval_batches(self.eval, batch_size, limit)

    # ---------------------------------------------------------------- the word recogniser (word_error_rate)
    def recogniser(self):
        """The cached word recogniser (trained on the training voices the first time) and its info, with the
        real-audio floors measured when it was trained: its WER on the eval split (held-out voices) as recorded,
        on the eval texts that hold a held-out pair, and after mel + Griffin-Lim (the vocoder's own cost)."""
        from aigc.metrics.speech import get_recogniser, transcribe, word_error_rate

        net, info = get_recogniser(self.name, self.recogniser_examples(), SPEECH_MEL.n_mels, len(TOKENS),
                                   digest(self.train.mel, self.train.tokens, self.eval.mel),
                                   steps=min(1500, max(100, len(self.train) // 2)),     # fewer for tiny data
                                   log=lambda msg: print(msg, file=sys.stderr))
        if "wer_real_eval_holdout_pairs" not in info:
            from aigc.metrics.speech import cache_info

            mels = self.eval.mels(torch.arange(len(self.eval)))
            texts = self.eval.texts
            info["wer_real_eval"] = word_error_rate(transcribe(net, mels, TOKENS), texts)
            again = [SPEECH_MEL.encode(griffin_lim(m))[0].T for m in mels]
            info["wer_real_griffin_lim"] = word_error_rate(transcribe(net, again, TOKENS), texts)
            pairs = [i for i, t in enumerate(texts) if has_holdout(t.split())]
            info["wer_real_eval_holdout_pairs"] = word_error_rate(transcribe(net, [mels[i] for i in pairs], TOKENS),
                                                                  [texts[i] for i in pairs])
            info["floor_utterances"] = len(mels)
            info["utterances"] = len(self.train)
            cache_info(info)
        return net, info

    def recogniser_examples(self):
        """draw(generator, n) -> (log-mels, word ids): half training utterances as they are, half spliced from the
        words of random training utterances (each word with the pause before it, a final pause after the last), so
        that the recogniser hears words in any order, not only the training phrases (all spliced measured worse:
        docs/speech.md)."""
        u = self.train
        words, pauses = [], []                             # (token, first frame, end frame) in u.mel
        for i in range(len(u)):
            s, n = int(u.token_start[i]), int(u.token_len[i])
            toks, frames = u.tokens[s:s + n].tolist(), u.frames[s:s + n].tolist()
            ends = (int(u.mel_start[i]) + torch.tensor(frames).cumsum(0)).tolist()
            for k in range(1, n, 2):
                words.append((toks[k], ends[k - 1] - frames[k - 1], ends[k]))
            pauses.append((ends[-1] - frames[-1], ends[-1]))
        targets = [[TOKENS.index(w) for w in t.split()] for t in u.texts]

        def draw(g: torch.Generator, n: int):
            half = n // 2
            idx = torch.randint(len(u), (half,), generator=g)
            mels, ys = u.mels(idx), [targets[i] for i in idx.tolist()]
            for _ in range(n - half):
                k = int(torch.randint(1, 9, (1,), generator=g))
                pick = torch.randint(len(words), (k,), generator=g).tolist()
                a, b = pauses[int(torch.randint(len(pauses), (1,), generator=g))]
                mels.append(torch.cat([u.mel[words[j][1]:words[j][2]] for j in pick] + [u.mel[a:b]]).float() / 255)
                ys.append([words[j][0] for j in pick])
            return mels, ys

        return draw

    def score_result(self, result) -> dict:
        """Generated speech scored by the recogniser: word error rate against the texts it was made from, beside the
        real-audio floors (held-out voices as recorded, and through mel + Griffin-Lim)."""
        from aigc.metrics.speech import transcribe, word_error_rate

        if result.prompts is None:
            raise AigcError("word error rate needs the texts the speech was made from")
        if result.sample_rate != SAMPLE_RATE:
            raise AigcError(f"speech samples must be {SAMPLE_RATE} Hz, got {result.sample_rate}")
        net, info = self.recogniser()
        audio = np.asarray(result.audio, np.float32)
        mels = [SPEECH_MEL.encode(torch.from_numpy(trim_padding(a))[None])[0].T for a in audio]
        heard = transcribe(net, mels, TOKENS)
        refs = [" ".join(p.lower().split()) for p in result.prompts]
        return {"word_error_rate": word_error_rate(heard, refs), "num_samples": len(refs),
                "wer_real_eval": info["wer_real_eval"], "wer_real_griffin_lim": info["wer_real_griffin_lim"],
                "wer_real_eval_holdout_pairs": info["wer_real_eval_holdout_pairs"],
                "floor_utterances": info["floor_utterances"],
                "recogniser": f"CTC word recogniser trained on {info['utterances']} utterances of the training voices "
                              "(synthesised speech)",
                "examples": [{"text": r, "heard": h} for r, h in zip(refs[:8], heard[:8])]}


def griffin_lim(mel: torch.Tensor) -> torch.Tensor:
    """A log-mel (T, n_mels) of `speech` -> audio (1, S) by Griffin-Lim."""
    return SPEECH_MEL.decode(mel.T[None], samples=(len(mel) - 1) * SPEECH_MEL.hop)


def text_words(text: str) -> list[str]:
    """The words of a text as the models read them: lower case, commas and full stops dropped."""
    return text.lower().replace(",", " ").replace(".", " ").split()


def encode_text(text: str, max_words: int | None = None) -> list[int]:
    """A text -> tokens with a pause before, between and after the words; a clear error naming the words the
    models know when one is not among them."""
    words = text_words(text)
    if not words:
        raise AigcError("the text to speak is empty")
    unknown = sorted({w for w in words if w not in WORDS})
    if unknown:
        raise AigcError(f"unknown word{'s' if len(unknown) > 1 else ''} {', '.join(repr(w) for w in unknown)}: the "
                        f"speech models know {len(WORDS)} words: {' '.join(WORDS)}")
    if max_words is not None and len(words) > max_words:
        raise AigcError(f"the text has {len(words)} words; this model speaks at most {max_words}")
    out = [0]
    for w in words:
        out += [TOKENS.index(w), 0]
    return out


def load_speech(cfg: SpeechConfig) -> SpeechData:
    check_sizes(cfg)
    if not 1 <= cfg.max_words <= 16:
        raise AigcError(f"data.max_words must be in 1..16, got {cfg.max_words}")
    a = load_cached(cache_path("speech", cfg, f"-{cfg.max_words}"), lambda: make_speech(cfg))
    return SpeechData("speech", Utterances(a, "train"), Utterances(a, "eval"))


def digest(*arrays: torch.Tensor) -> str:
    h = hashlib.sha256()
    for x in arrays:
        h.update(x.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load(cfg):
    """`speech` or `spoken-digits`, by the config's class."""
    return load_speech(cfg) if isinstance(cfg, SpeechConfig) else load_digits(cfg)
