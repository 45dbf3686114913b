"""A non-autoregressive text-to-speech model in the manner of FastSpeech 2 (Ren et al. 2021): text tokens -> log-mel
frames in one pass, with explicit durations instead of attention alignment.

- Encoder: token embeddings (words and pauses) + sinusoidal positions + the voice, through FFT blocks (self-attention
  and a 1-D convolution feed-forward, FastSpeech's block).
- Duration predictor: two 1-D convolutions on the encoder output -> log(1 + frames) per token (MSE), trained on the
  data's known durations.
- Length regulator: each token's vector repeated for its frames, plus where the frame lies inside its token (an
  embedding of its index, and Fourier features of the fraction of the token before it, which carries over between
  fast and slow speech), then decoder FFT blocks and a linear layer to the mel bands.
- Voice: an embedding per training voice (one more row for "any voice", used for unseen voices and dropped in
  with probability `voice_dropout`) plus a linear map of (pitch, speed, loudness) scaled to [0, 1].

The loss is L1 + MSE on the padded-out log-mel frames (values in [0, 1]) plus the duration MSE."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TTSConfig:
    vocab_size: int = 0              # tokens: a pause and the words (set from the data)
    n_voices: int = 0                # training voices (set from the data)
    n_mels: int = 0                  # mel bands (set from the data)
    max_words: int = 0               # the longest text the data had (set from the data)
    d_model: int = 128
    heads: int = 2
    enc_layers: int = 2
    dec_layers: int = 3
    ff_mult: int = 2
    kernel: int = 3                  # the feed-forward's 1-D convolution
    dropout: float = 0.0
    voice_dropout: float = 0.1       # share of training utterances given the "any voice" embedding
    max_token_frames: int = 128      # frames one token can last (the place-in-token embedding's size)
    max_frames: int = 1200           # frames one utterance can last when sampling (19 s at 16 ms)
    griffin_lim_iters: int = 48


def sinusoid(n: int, dim: int, device=None) -> torch.Tensor:
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out


FRACTION_FREQS = 16                  # Fourier features of how far into its token a frame is


class FFTBlock(nn.Module):
    """Self-attention and a conv feed-forward, both pre-norm residual; padded positions are masked out."""

    def __init__(self, m: TTSConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(m.d_model), nn.LayerNorm(m.d_model)
        self.attn = nn.MultiheadAttention(m.d_model, m.heads, batch_first=True)     # no dropout: the fused kernel
        self.conv1 = nn.Conv1d(m.d_model, m.d_model * m.ff_mult, m.kernel, padding=m.kernel // 2)
        self.conv2 = nn.Conv1d(m.d_model * m.ff_mult, m.d_model, 1)
        self.drop = nn.Dropout(m.dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:       # x (B, T, D), pad (B, T) bool
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
        h = self.norm2(x).masked_fill(pad[..., None], 0).transpose(1, 2)
        x = x + self.drop(self.conv2(F.relu(self.conv1(h))).transpose(1, 2))
        return x.masked_fill(pad[..., None], 0)


class DurationPredictor(nn.Module):
    def __init__(self, m: TTSConfig):
        super().__init__()
        d = m.d_model
        self.conv1, self.conv2 = nn.Conv1d(d, d, 3, padding=1), nn.Conv1d(d, d, 3, padding=1)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.out = nn.Linear(d, 1)
        self.drop = nn.Dropout(m.dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:         # -> log(1 + frames) (B, L)
        """Padded positions are zeroed after each layer, so a text's durations do not depend on how long the other
        texts of its batch are (the convolutions see zeros past the end, as they do for a text alone)."""
        for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
            x = self.drop(norm(F.relu(conv(x.transpose(1, 2))).transpose(1, 2))).masked_fill(pad[..., None], 0)
        return self.out(x).squeeze(-1)


class TTS(nn.Module):
    def __init__(self, m: TTSConfig):
        super().__init__()
        self.m = m
        self.embed = nn.Embedding(m.vocab_size, m.d_model)
        self.voice = nn.Embedding(m.n_voices + 1, m.d_model)          # last row: any voice
        self.voice_params = nn.Linear(3, m.d_model)
        self.encoder = nn.ModuleList(FFTBlock(m) for _ in range(m.enc_layers))
        self.durations = DurationPredictor(m)
        self.place = nn.Embedding(m.max_token_frames, m.d_model)
        self.fraction = nn.Linear(2 * FRACTION_FREQS, m.d_model)
        self.decoder = nn.ModuleList(FFTBlock(m) for _ in range(m.dec_layers))
        self.norm = nn.LayerNorm(m.d_model)
        self.to_mel = nn.Linear(m.d_model, m.n_mels)

    def condition(self, voice: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """(B, D): the voice's embedding (a negative id = any voice) plus its (pitch, speed, loudness)."""
        v = torch.where(voice < 0, torch.full_like(voice, self.m.n_voices), voice)
        return self.voice(v) + self.voice_params(params)

    def encode(self, tokens: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L) padded with -1 -> (encoder output (B, L, D), padding mask)."""
        pad = tokens < 0
        x = self.embed(tokens.clamp_min(0)) * math.sqrt(self.m.d_model)
        x = x + sinusoid(tokens.shape[1], self.m.d_model, tokens.device) + cond[:, None]
        x = x.masked_fill(pad[..., None], 0)
        for block in self.encoder:
            x = block(x, pad)
        return x, pad

    def regulate(self, h: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Repeat each token's vector for its frames (B, L) -> (B, T, D) with the place-in-token embedding added,
        and the frame padding mask (B, T)."""
        total = frames.sum(1)
        T = max(int(total.max()), 1)
        out = h.new_zeros(len(h), T, h.shape[-1])
        for b in range(len(h)):
            n = int(total[b])
            if n:
                out[b, :n] = h[b].repeat_interleave(frames[b], 0)
        ends = frames.cumsum(1)
        t = torch.arange(T, device=h.device)
        token = torch.searchsorted(ends, t.expand(len(h), T).contiguous(), right=True).clamp(max=frames.shape[1] - 1)
        starts = ends - frames
        place = (t - starts.gather(1, token)).clamp(0, self.m.max_token_frames - 1)
        fraction = (place + 0.5) / frames.gather(1, token).clamp_min(1)                 # (B, T) in (0, 1)
        angles = fraction[..., None] * math.pi * torch.arange(1, FRACTION_FREQS + 1, device=h.device)
        where = self.place(place) + self.fraction(torch.cat([angles.sin(), angles.cos()], -1))
        pad = t[None] >= total[:, None]
        return (out + where).masked_fill(pad[..., None], 0), pad

    def decode(self, x: torch.Tensor, pad: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = x + sinusoid(x.shape[1], self.m.d_model, x.device) + cond[:, None]
        for block in self.decoder:
            x = block(x, pad)
        return torch.sigmoid(self.to_mel(self.norm(x)))

    def loss(self, batch: dict, voice_dropout: float = 0.0) -> dict:
        """Mel L1 + MSE over the real frames and the duration MSE over the real tokens (teacher-forced durations)."""
        tokens, frames, mel = batch["tokens"], batch["frames"], batch["mel"]
        voice = batch["voice"]
        if voice_dropout > 0:
            voice = torch.where(torch.rand(voice.shape, device=voice.device) < voice_dropout, -1, voice)
        cond = self.condition(voice, batch["voice_params"])
        h, tpad = self.encode(tokens, cond)
        log_dur = self.durations(h, tpad)
        x, fpad = self.regulate(h, frames)
        pred = self.decode(x, fpad, cond)
        keep = (~fpad)[..., None].float()
        n = keep.sum() * pred.shape[-1]
        err = (pred - mel[:, :pred.shape[1]]) * keep
        mel_loss = err.abs().sum() / n + err.pow(2).sum() / n
        tkeep = (~tpad).float()
        dur_loss = ((log_dur - torch.log1p(frames.float())) ** 2 * tkeep).sum() / tkeep.sum()
        return {"loss": mel_loss + dur_loss, "mel_loss": mel_loss.detach(), "duration_loss": dur_loss.detach()}

    @torch.no_grad()
    def synthesize(self, tokens: torch.Tensor, voice: torch.Tensor, params: torch.Tensor,
                   speed: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L) padded with -1 -> (log-mels (B, T, n_mels) in [0, 1], frames per utterance (B,)), with
        predicted durations (words last at least one frame)."""
        cond = self.condition(voice, params)
        h, tpad = self.encode(tokens, cond)
        frames = (torch.expm1(self.durations(h, tpad)) / speed).round().clamp(0, self.m.max_token_frames).long()
        frames = torch.where(tokens > 0, frames.clamp_min(1), frames).masked_fill(tpad, 0)
        over = frames.sum(1) > self.m.max_frames
        if over.any():                              # scale down what would not fit (never for texts of the data)
            scale = self.m.max_frames / frames.sum(1, keepdim=True).clamp_min(1)
            frames = torch.where(over[:, None], (frames * scale).floor().long(), frames)
        x, fpad = self.regulate(h, frames)
        mel = self.decode(x, fpad, cond).masked_fill(fpad[..., None], 0)
        return mel, frames.sum(1)
