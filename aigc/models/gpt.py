"""GPT: a decoder-only Transformer language model (Radford et al. 2018/2019), after nanoGPT.

Autoregressive factorisation:  p(x_1..x_T) = prod_t p(x_t | x_<t), one softmax over the vocabulary
per position, trained with cross-entropy on the next token.
Each block is pre-LayerNorm:  x = x + Attn(LN(x));  x = x + MLP(LN(x)),  with causal multi-head
self-attention (Vaswani et al. 2017, eq. 1):
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V,   M_ij = -inf for j > i (no peeking ahead)
computed by torch's scaled_dot_product_attention. Token and position embeddings are summed; the
output projection shares the token-embedding matrix (weight tying, Press & Wolf 2017).

KV cache: at generation time each layer keeps the keys and values of past positions, so a new
token costs one row of attention instead of recomputing the whole prefix."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 0          # 0 = set from the tokenizer
    block_size: int = 64         # context length
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False


class KVCache:
    """Per-layer key/value tensors (B, n_head, max_len, head_dim), filled up to `pos`."""

    def __init__(self, cfg: GPTConfig, batch: int, device, dtype):
        hd = cfg.n_embd // cfg.n_head
        self.k = [torch.zeros(batch, cfg.n_head, cfg.block_size, hd, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.pos = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            p = cache.pos
            cache.k[layer][:, :, p:p + T] = k
            cache.v[layer][:, :, p:p + T] = v
            k, v = cache.k[layer][:, :, :p + T], cache.v[layer][:, :, :p + T]
            if T == 1:                               # one new query sees every cached key
                y = F.scaled_dot_product_attention(q, k, v)
            else:                                    # a chunk after p cached tokens: causal within the chunk
                mask = torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(diagonal=p)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("GPTConfig.vocab_size must be set (from the tokenizer)")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight                     # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():                   # GPT-2: scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

    def forward(self, idx, cache: KVCache | None = None):      # idx: (B, T) -> logits (B, T, vocab)
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.cfg.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))               # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.ln_f(x))

    def loss(self, tokens, loss_mask=None) -> dict[str, torch.Tensor]:
        """tokens: (B, T+1); next-token cross-entropy in nats per (unmasked) token."""
        x, y = tokens[:, :-1], tokens[:, 1:]
        logits = self(x)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        if loss_mask is None:
            loss = nll.mean()
            count = torch.tensor(float(nll.numel()))
        else:
            m = loss_mask.reshape(-1).float()
            count = m.sum()
            loss = (nll * m).sum() / count.clamp(min=1)
        return {"loss": loss, "sum": loss.detach() * count, "count": count}
