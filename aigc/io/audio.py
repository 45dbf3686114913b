"""WAV files: 16-bit PCM mono written with the standard library's `wave`; read back from 8/16/32-bit PCM (channels
averaged) as float32 in [-1, 1]."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

from aigc.errors import AigcError


def trim_padding(audio: np.ndarray) -> np.ndarray:
    """float (S,) -> the audio without its trailing run of exact zeros (at least one sample kept).

    Several utterances of different lengths travel as one (N, S) array padded with exact zeros (`audio_result`);
    synthesised or recorded speech is never exactly 0 for a run of samples, so the run marks the padding. WAV files
    and the word recogniser take each utterance as long as it was made: a recogniser hears a second of padded
    silence after "circle" as "circles" (docs/speech.md)."""
    nz = np.flatnonzero(np.asarray(audio) != 0)
    return audio[:int(nz[-1]) + 1 if len(nz) else 1]


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """float (S,) in [-1, 1] -> the bytes of a 16-bit PCM mono WAV file."""
    pcm = (np.clip(np.asarray(audio, np.float32), -1, 1) * 32767).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    path = Path(path)
    path.write_bytes(wav_bytes(audio, sample_rate))
    return path


def pcm_to_float(data: bytes, width: int, channels: int) -> np.ndarray:
    if width == 1:
        x = (np.frombuffer(data, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(data, "<i2").astype(np.float32) / 32768
    elif width == 4:
        x = np.frombuffer(data, "<i4").astype(np.float32) / 2147483648
    else:
        raise AigcError(f"{8 * width}-bit WAV is not supported (8, 16 or 32-bit PCM)")
    return x[: len(x) // channels * channels].reshape(-1, channels).mean(1)


def read_wav(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """(float32 mono audio in [-1, 1], sample rate) of a PCM WAV file (a path or its bytes)."""
    name = "the WAV data" if isinstance(source, bytes) else f"'{source}'"
    try:
        with wave.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), "rb") as w:
            data = w.readframes(w.getnframes())
            return pcm_to_float(data, w.getsampwidth(), w.getnchannels()), w.getframerate()
    except (wave.Error, EOFError) as e:
        raise AigcError(f"cannot read {name} as a PCM WAV file: {e}") from None
    except OSError as e:
        raise AigcError(f"cannot read {name}: {e.strerror or e}") from None
