"""Captioner: an image (or clip) encoder and a GPT decoder with cross-attention, after Show, Attend and Tell
(Xu et al. 2015: a CNN's feature grid, attended by the decoder at every word) with the Transformer decoder of
Vaswani et al. 2017 (self-attention over the words so far, then cross-attention over the image tokens).

Encoder: a small strided CNN turns each 32x32 frame into a `grid` x `grid` map of features (the "annotation
vectors" of Show, Attend and Tell), each cell a token with a learned position. A clip's frames (`enc_frames` of
them, evenly spaced or every `frame_stride`-th from the first) add a learned frame embedding; with `frame_diff`
the CNN also reads each frame's difference from the first frame (the material's frame difference, here as an
input: motion becomes a local pattern, bright where the shape arrived and dark where it left), and `enc_layers`
Transformer encoder layers let every token see the others.
Decoder: the blocks of models/gpt.py (causal self-attention, MLP, pre-LayerNorm, tied output embedding) with a
cross-attention sub-layer added to each block:  x += SelfAttn(LN x);  x += CrossAttn(LN x, image tokens);
x += MLP(LN x). Trained by teacher forcing (next-token cross-entropy on the caption), optionally with word
dropout (previous tokens hidden at random, Bowman et al. 2016), which weakens the decoder's language prior: a
decoder that never saw a green triangle learns "green" predicts "circle or square" unless it must read the
shape off the image; decoded free-running:
greedy, beam search (length-normalised log-probability) or nucleus sampling (Holtzman et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc.models.gpt import GPT, Block, GPTConfig


@dataclass
class CaptionerConfig:
    vocab_size: int = 0          # 0 = set from the tokenizer
    eos: int = 0                 # set from the tokenizer: its end-of-text id, which also starts every caption
    tokenizer_vocab: int = 512   # the BPE tokenizer learned from the training captions has at most this many tokens
    block_size: int = 24         # caption tokens the decoder sees (start token + caption + end token)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    enc_width: int = 64          # channels of the CNN encoder
    enc_layers: int = 1          # Transformer encoder layers over the image tokens
    grid: int = 8                # image tokens per side (the CNN's map is pooled to grid x grid)
    enc_frames: int = 0          # clips: frames the encoder reads (0 = every frame); images: unused
    frame_stride: int = 0        # clips: read frames 0, s, 2s, ... (0 = evenly spaced over the whole clip)
    frame_diff: bool = False     # clips: the CNN also reads each frame minus the first frame
    clip_frames: int = 0         # set from the data: frames per clip (0 = an image model)
    channels: int = 3            # set from the data
    word_dropout: float = 0.0    # training: chance of hiding each previous caption token from the decoder
    decoding: str = "greedy"     # the default decoding: greedy | beam | top_p
    beam: int = 4                # beam width for decoding = beam
    top_p: float = 0.9           # nucleus for decoding = top_p


def gpt_config(m: CaptionerConfig) -> GPTConfig:
    return GPTConfig(m.vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout, m.bias)


def seen_frames(m: CaptionerConfig) -> int:
    """How many frames of a clip the encoder reads (1 for an image model)."""
    if not m.clip_frames:
        return 1
    return min(m.enc_frames, m.clip_frames) if m.enc_frames else m.clip_frames


class ImageEncoder(nn.Module):
    """uint8-scaled images (B, C, H, W) or clips (B, C, T, H, W) in [0, 1] -> tokens (B, N, n_embd)."""

    def __init__(self, m: CaptionerConfig):
        super().__init__()
        w, d = m.enc_width, m.n_embd
        self.grid, self.frames, self.clip_frames, self.stride = m.grid, seen_frames(m), m.clip_frames, m.frame_stride
        self.frame_diff = bool(m.frame_diff and m.clip_frames)
        self.cnn = nn.Sequential(
            nn.Conv2d(m.channels * (2 if self.frame_diff else 1), w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, d, 3, padding=1))
        self.pos = nn.Parameter(torch.randn(m.grid * m.grid, d) * 0.02)
        self.frame_pos = nn.Parameter(torch.randn(self.frames, d) * 0.02) if m.clip_frames else None
        layer = nn.TransformerEncoderLayer(d, m.n_head, 4 * d, dropout=m.dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, m.enc_layers, enable_nested_tensor=False) if m.enc_layers else None
        self.norm = nn.LayerNorm(d)

    def frame_index(self, t: int) -> torch.Tensor:
        """The `self.frames` frames of a t-frame clip that the encoder reads: every `stride`-th from the first, or
        evenly spaced over the clip (stride 0, or when the stride would run past its end)."""
        if self.stride and (self.frames - 1) * self.stride < t:
            return torch.arange(self.frames) * self.stride
        return torch.linspace(0, t - 1, self.frames).round().long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = x.dim() == 5
        if clip:
            x = x[:, :, self.frame_index(x.shape[2]).to(x.device)] * 2 - 1
            if self.frame_diff:
                x = torch.cat([x, x - x[:, :, :1]], 1)
            b, c, t, h, w = x.shape
            x = x.transpose(1, 2).reshape(b * t, c, h, w)
        else:
            x = x * 2 - 1
        f = F.adaptive_avg_pool2d(self.cnn(x), self.grid)               # (B*T, d, grid, grid)
        tokens = f.flatten(2).transpose(1, 2) + self.pos                 # (B*T, grid^2, d)
        if clip:
            tokens = (tokens.view(b, t, -1, tokens.shape[-1]) + self.frame_pos[:, None]).flatten(1, 2)
        if self.blocks is not None:
            tokens = self.blocks(tokens)
        return self.norm(tokens)


class CrossAttention(nn.Module):
    """Multi-head attention of the words (queries) over the image tokens (keys and values)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.kv = nn.Linear(cfg.n_embd, 2 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_head
        q = self.q(x).view(B, T, H, C // H).transpose(1, 2)
        k, v = self.kv(memory).view(B, memory.shape[1], 2, H, C // H).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class CrossBlock(Block):
    """A GPT block (models/gpt.py) with cross-attention between its self-attention and its MLP."""

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.ln_x = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.cross = CrossAttention(cfg)

    def forward(self, x, memory):
        x = x + self.attn(self.ln1(x))
        x = x + self.cross(self.ln_x(x), memory)
        return x + self.mlp(self.ln2(x))


class CaptionDecoder(GPT):
    """GPT with CrossBlocks: token ids (B, T) and image tokens (B, N, C) -> next-token logits (B, T, vocab)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.blocks = nn.ModuleList(CrossBlock(cfg) for _ in range(cfg.n_layer))
        self.init_weights()

    def forward(self, idx, memory):
        T = idx.shape[1]
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.cfg.block_size}")
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x, memory)
        return self.lm_head(self.ln_f(x))


class Captioner(nn.Module):
    """Encoder + decoder. Captions are token sequences [bos, w_1 .. w_n, eos] with bos = eos = the tokenizer's
    end-of-text id (`eos`)."""

    def __init__(self, m: CaptionerConfig, eos: int):
        super().__init__()
        if m.vocab_size < 1:
            raise ValueError("CaptionerConfig.vocab_size must be set (from the tokenizer)")
        self.m, self.eos = m, eos
        self.encoder = ImageEncoder(m)
        self.decoder = CaptionDecoder(gpt_config(m))

    def loss(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher forcing. tokens: (B, L+1) [bos, caption, eos, -1 padding]; cross-entropy in nats per caption
        token (the eos included, the padding not)."""
        x, y = tokens[:, :-1].clamp(min=0), tokens[:, 1:]
        if self.training and self.m.word_dropout > 0:            # word dropout (Bowman et al. 2016): the decoder
            hide = torch.rand(x.shape, device=x.device) < self.m.word_dropout    # must read the image, not guess
            hide[:, 0] = False                                   # a word from the words before it
            x = torch.where(hide, self.eos, x)
        logits = self.decoder(x, self.encoder(images))
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-1, reduction="sum")
        count = (y >= 0).sum()
        loss = nll / count.clamp(min=1)
        return {"loss": loss, "sum": nll.detach(), "count": count.float()}

    # ---------------------------------------------------------------- free-running decoding
    def _start(self, n: int, device) -> torch.Tensor:
        return torch.full((n, 1), self.eos, dtype=torch.long, device=device)

    def sample(self, images: torch.Tensor, max_len: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None) -> list[list[int]]:
        """Greedy decoding (top_p None), or nucleus sampling from the smallest set of tokens whose probability
        reaches top_p. Returns each image's caption tokens (without bos / eos)."""
        max_len = min(max_len or self.m.block_size - 1, self.m.block_size - 1)
        memory = self.encoder(images)
        seq = self._start(len(images), images.device)
        done = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for _ in range(max_len):
            logits = self.decoder(seq, memory)[:, -1].float()
            if top_p is None:
                nxt = logits.argmax(-1)
            else:
                probs = logits.softmax(-1)
                sorted_p, order = probs.sort(-1, descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < top_p                  # the nucleus (always the top token)
                sorted_p = torch.where(keep, sorted_p, 0.0)
                u = torch.rand(len(images), 1, generator=generator).to(probs.device) * sorted_p.sum(-1, keepdim=True)
                pick = (sorted_p.cumsum(-1) < u).sum(-1).clamp(max=probs.shape[-1] - 1)
                nxt = order.gather(1, pick[:, None]).squeeze(1)
            nxt = torch.where(done, self.eos, nxt)
            seq = torch.cat([seq, nxt[:, None]], 1)
            done |= nxt == self.eos
            if done.all():
                break
        return [_strip(row, self.eos) for row in seq[:, 1:].tolist()]

    def beam_search(self, images: torch.Tensor, beam: int = 4, max_len: int | None = None,
                    alpha: float = 1.0) -> list[list[int]]:
        """Beam search: keep the `beam` best partial captions by summed log-probability; a finished caption scores
        its summed log-probability / length^alpha (Wu et al. 2016's length normalisation, simplified)."""
        max_len = min(max_len or self.m.block_size - 1, self.m.block_size - 1)
        n, dev = len(images), images.device
        memory = self.encoder(images).repeat_interleave(beam, 0)             # (n*beam, N, C)
        seq = self._start(n * beam, dev)
        score = torch.full((n, beam), float("-inf"), device=dev)
        score[:, 0] = 0.0                                                    # one live beam to start
        best = [(float("-inf"), []) for _ in range(n)]
        for step in range(1, max_len + 1):
            logp = self.decoder(seq, memory)[:, -1].float().log_softmax(-1)  # (n*beam, V)
            V = logp.shape[-1]
            total = (score.view(-1, 1) + logp).view(n, beam * V)
            top, idx = total.topk(beam, dim=1)                               # (n, beam)
            src, tok = idx // V, idx % V
            seq = torch.cat([seq.view(n, beam, -1).gather(1, src[..., None].expand(-1, -1, seq.shape[1])),
                             tok[..., None]], 2).view(n * beam, -1)
            ended = tok == self.eos
            for i, b in ended.nonzero().tolist():                           # finished hypotheses leave the beam
                s = top[i, b].item() / step ** alpha
                if s > best[i][0]:
                    best[i] = (s, seq.view(n, beam, -1)[i, b, 1:-1].tolist())
            score = torch.where(ended, float("-inf"), top)
            # stop when no live beam can still beat the best finished caption (scores only fall with length)
            live = score.max(1).values / max_len ** alpha if alpha > 0 else score.max(1).values
            if all(live[i].item() <= best[i][0] for i in range(n)):
                break
        for i in range(n):                                                   # nothing finished: the best live beam
            if not best[i][1] and best[i][0] == float("-inf"):
                b = int(score[i].argmax())
                best[i] = (0.0, _strip(seq.view(n, beam, -1)[i, b, 1:].tolist(), self.eos))
        return [b[1] for b in best]


def _strip(tokens: list[int], eos: int) -> list[int]:
    return tokens[:tokens.index(eos)] if eos in tokens else tokens
