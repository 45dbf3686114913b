"""Audio features in plain torch: log-mel spectrograms (`torch.stft` and an own mel filterbank), their inversion
by Griffin-Lim, resampling, and the log-mel <-> [0, 1] scaling the speech datasets train on.

torchaudio has no build for the torch aigc runs on, so everything here is written out:
- mel scale and triangular filters as in HTK (O'Shaughnessy 1987: mel = 2595 log10(1 + f / 700));
- magnitudes are normalised by the window's sum, so a full-scale sine reads about 0 dB;
- Griffin-Lim (Griffin & Lim 1984) with the momentum of "fast Griffin-Lim" (Perraudin et al. 2013): the mel
  magnitudes are first mapped back to linear frequency by non-negative least squares, solved with the
  multiplicative updates of Lee & Seung (2001) from the pseudo-inverse's solution (the plain pseudo-inverse leaks
  energy into bands that were silent)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch


def hz_to_mel(f):
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None):
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the mel scale, peak 1."""
    fmax = fmax or sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(fmin)), float(hz_to_mel(fmax)), n_mels + 2, dtype=torch.float64))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lo) / (mid - lo)
    down = (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0).float()


@dataclass(frozen=True)
class MelSpec:
    """One log-mel front end: `encode` audio (N, S) -> log-mel in [0, 1] (N, n_mels, frames), `decode` back to
    audio by Griffin-Lim. Values in [0, 1] map linearly to [floor_db, top_db] dB."""
    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 256
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0
    floor_db: float = -80.0
    top_db: float = 0.0

    @cached_property
    def filters(self) -> torch.Tensor:
        return mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax)

    @cached_property
    def inverse(self) -> torch.Tensor:
        return torch.linalg.pinv(self.filters)

    @cached_property
    def window(self) -> torch.Tensor:
        return torch.hann_window(self.n_fft)

    def frames(self, samples: int) -> int:
        """Frames `encode` makes of `samples` samples (centred STFT)."""
        return samples // self.hop + 1

    def magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """|STFT| of the audio; a clip of at most half a window (the centred STFT's reflection needs more) is
        first padded with silence to half a window and one sample."""
        short = self.n_fft // 2 + 1 - audio.shape[-1]
        if short > 0:
            audio = torch.nn.functional.pad(audio, (0, short))
        spec = torch.stft(audio.float(), self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        return spec.abs() * (2.0 / self.window.sum())

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """float audio (N, S) or (S,) in [-1, 1] -> log-mel (N, n_mels, frames) in [0, 1]."""
        mel = self.filters @ self.magnitude(audio)
        db = 20.0 * torch.log10(mel.clamp_min(1e-6))
        return ((db - self.floor_db) / (self.top_db - self.floor_db)).clamp(0, 1)

    def to_magnitude(self, logmel: torch.Tensor, iters: int = 30) -> torch.Tensor:
        """log-mel (..., n_mels, frames) -> linear magnitudes (..., n_fft // 2 + 1, frames) >= 0."""
        db = logmel.float().clamp(0, 1) * (self.top_db - self.floor_db) + self.floor_db
        mel = 10.0 ** (db / 20.0)
        mel = torch.where(logmel <= 0, torch.zeros_like(mel), mel)        # the floor is silence
        fb = self.filters
        lin = (self.inverse @ mel).clamp_min(1e-7)
        top = fb.T @ mel
        gram = fb.T @ fb
        for _ in range(iters):
            lin = lin * top / (gram @ lin + 1e-9)
        return lin

    def decode(self, logmel: torch.Tensor, iters: int = 48, momentum: float = 0.99, seed: int = 0,
               samples: int | None = None) -> torch.Tensor:
        """log-mel (N, n_mels, frames) in [0, 1] -> audio (N, S) in [-1, 1] by fast Griffin-Lim from a seeded
        random phase (the same input gives the same audio). `samples`: the length to pad or cut the audio to (the
        frames cover (frames - 1) * hop samples; istft beyond them would divide by a vanishing window sum)."""
        mag = self.to_magnitude(logmel) / (2.0 / self.window.sum())
        g = torch.Generator().manual_seed(seed)
        angles = torch.polar(torch.ones_like(mag), torch.rand(mag.shape, generator=g) * 2 * math.pi)
        length = (mag.shape[-1] - 1) * self.hop
        prev = torch.zeros_like(angles)
        for _ in range(iters):
            audio = torch.istft(mag * angles, self.n_fft, self.hop, window=self.window, center=True, length=length)
            rebuilt = torch.stft(audio, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
            accel = rebuilt - (momentum / (1 + momentum)) * prev
            angles = accel / accel.abs().clamp_min(1e-8)
            prev = rebuilt
        audio = torch.istft(mag * angles, self.n_fft, self.hop, window=self.window, center=True, length=length)
        if samples is not None:
            audio = torch.nn.functional.pad(audio, (0, samples - length)) if samples > length else audio[..., :samples]
        return audio.clamp(-1, 1)


def resample(audio: torch.Tensor, rate_in: int, rate_out: int) -> torch.Tensor:
    """Band-limited resampling of (..., S) by the FFT (the spectrum cut or zero-padded to the new length)."""
    if rate_in == rate_out:
        return audio
    n = audio.shape[-1]
    m = max(1, round(n * rate_out / rate_in))
    spec = torch.fft.rfft(audio.double(), dim=-1)
    keep = min(spec.shape[-1], m // 2 + 1)
    out = torch.fft.irfft(spec[..., :keep], n=m, dim=-1) * (m / n)
    return out.float()


def to_image(logmel: torch.Tensor) -> torch.Tensor:
    """log-mel (N, n_mels, frames) in [0, 1] -> uint8 images (N, 1, n_mels, frames), low frequencies at the bottom."""
    return (logmel.flip(-2) * 255).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)


def from_image(images: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_image`: uint8 (N, 1, H, W) or float [0, 1] -> log-mel (N, n_mels, frames) in [0, 1]."""
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    return x[:, 0].flip(-2)
