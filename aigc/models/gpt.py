"""GPT: a decoder-only Transformer language model (Radford et al. 2018/2019), after nanoGPT.

Autoregressive factorisation:  p(x_1..x_T) = prod_t p(x_t | x_<t), one softmax over the vocabulary
per position, trained with cross-entropy on the next token.
Each block is pre-LayerNorm:  x = x + Attn(LN(x));  x = x + MLP(LN(x)),  with causal multi-head
self-attention (Vaswani et al. 2017, eq. 1):
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V,   M_ij = -inf for j > i (no peeking ahead)
computed by torch's scaled_dot_product_attention. Token and position embeddings are summed; the
output projection shares the token-embedding matrix (weight tying, Press & Wolf 2017).

KV cache: at generation time each layer keeps the keys and values of past positions, so a new
token costs one row of attention instead of recomputing the whole prefix. `Decoder` is the
one-token step of the same network written with plain tensor ops: on a CPU, decoding one stream is
a chain of tiny matmuls where Python and module-call overhead, not arithmetic, sets the speed."""

from __future__ import annotations

import functools
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
    """Per-layer keys and values in one tensor (B, 2, n_head, max_len, head_dim) each, filled up to
    `pos`; keeping K and V together lets a step write both with one copy."""

    def __init__(self, cfg: GPTConfig, batch: int, device, dtype):
        hd = cfg.n_embd // cfg.n_head
        self.kv = [torch.zeros(batch, 2, cfg.n_head, cfg.block_size, hd, device=device, dtype=dtype)
                   for _ in range(cfg.n_layer)]
        self.pos = 0


class SlotCache:
    """Keys and values of up to `slots` independent sequences, each at its own position, for continuous batching
    (Yu et al., "Orca", OSDI 2022: requests join and leave the running batch between steps). Rows 0..n-1 are in
    use and kept contiguous, so a step works on views `kv[:n]` without copying the cache."""

    def __init__(self, cfg: GPTConfig, slots: int, device, dtype):
        hd = cfg.n_embd // cfg.n_head
        self.kv = [torch.zeros(slots, 2, cfg.n_head, cfg.block_size, hd, device=device, dtype=dtype)
                   for _ in range(cfg.n_layer)]
        self.pos = torch.zeros(slots, dtype=torch.long, device=device)
        self.slots, self.n = slots, 0

    def put(self, row: int, cache: KVCache, index: int = 0) -> None:
        """Copy sequence `index` of a KVCache (a prefilled prompt) into `row`."""
        p = cache.pos
        for mine, theirs in zip(self.kv, cache.kv):
            mine[row, :, :, :p] = theirs[index, :, :, :p]
        self.pos[row] = p

    def take(self, rows: torch.Tensor) -> None:
        """Rows `rows` (any order) become rows 0..len(rows)-1 (to close the gaps finished sequences leave)."""
        m = len(rows)
        for kv in self.kv:
            kv[:m] = kv[rows]
        self.pos[:m] = self.pos[rows].clone()
        self.n = m


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
            p, kv = cache.pos, cache.kv[layer]
            kv[:, 0, :, p:p + T] = k
            kv[:, 1, :, p:p + T] = v
            k, v = kv[:, 0, :, :p + T], kv[:, 1, :, :p + T]
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
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)."""
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.cfg.n_layer))

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
        return self.lm_head(self.features(idx, cache))

    def features(self, idx, cache: KVCache | None = None):     # idx: (B, T) -> final hidden states (B, T, C)
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
        return self.ln_f(x)

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


def _without_autocast(step):
    """Run a Decoder step in the weights' own dtype also inside an autocast region (the trainer samples under
    bf16 autocast on CUDA): the KV cache is written in place, which takes one dtype."""
    @functools.wraps(step)
    def wrapped(self, tok, cache):
        kind = tok.device.type
        if torch.is_autocast_enabled(kind):
            with torch.autocast(kind, enabled=False):
                return step(self, tok, cache)
        return step(self, tok, cache)
    return wrapped


class Decoder:
    """The one-token forward pass of a GPT in eval mode: the same arithmetic as `GPT.forward(idx, cache)`
    for T = 1 (tested equal), as a flat sequence of tensor ops on the model's weights.

    Per layer: x += W_o attn(q, K, V) and x += W_2 gelu(W_1 LN(x)), each residual add fused into one
    addmm; new keys and values are written into the cache with one copy. The weights are views of the
    model's parameters, so build a Decoder after moving or loading the model, not before."""

    def __init__(self, model: GPT):
        cfg = model.cfg
        self.cfg, self.shape = cfg, (cfg.n_embd,)
        self.hd = cfg.n_embd // cfg.n_head

        def t(lin):                                   # (in, out) view for x @ W^T, plus its bias
            return lin.weight.t(), lin.bias
        self.layers = [(b.ln1.weight, b.ln1.bias, *t(b.attn.qkv), *t(b.attn.proj),
                        b.ln2.weight, b.ln2.bias, *t(b.mlp.fc), *t(b.mlp.proj)) for b in model.blocks]
        self.wte, self.wpe = model.wte.weight, model.wpe.weight
        self.ln_f = (model.ln_f.weight, model.ln_f.bias)
        self.head = model.lm_head.weight.t()

    @_without_autocast
    def __call__(self, tok: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """tok: (B,) token ids at position cache.pos -> logits (B, vocab); advances the cache."""
        p, (B,), H, hd, shape = cache.pos, tok.shape, self.cfg.n_head, self.hd, self.shape
        if p >= self.cfg.block_size:
            raise ValueError(f"KV cache is full ({p} of block_size {self.cfg.block_size} positions)")
        x = self.wte[tok] + self.wpe[p]
        for (g1, b1, wqkv, bqkv, wo, bo, g2, b2, wfc, bfc, wp, bp), kv in zip(self.layers, cache.kv):
            h = F.layer_norm(x, shape, g1, b1)
            qkv = (torch.mm(h, wqkv) if bqkv is None else torch.addmm(bqkv, h, wqkv)).view(B, 3, H, hd)
            kv[:, :, :, p] = qkv[:, 1:]
            y = F.scaled_dot_product_attention(qkv[:, 0].unsqueeze(2), kv[:, 0, :, :p + 1], kv[:, 1, :, :p + 1])
            x = torch.addmm(x if bo is None else x + bo, y.view(B, -1), wo)
            h = F.layer_norm(x, shape, g2, b2)
            h = F.gelu(torch.mm(h, wfc) if bfc is None else torch.addmm(bfc, h, wfc))
            x = torch.addmm(x if bp is None else x + bp, h, wp)
        cache.pos = p + 1
        return torch.mm(F.layer_norm(x, shape, *self.ln_f), self.head)

    @_without_autocast
    def step_rows(self, tok: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """tok: (n,) token ids of rows 0..n-1 of a SlotCache, each at its own position -> logits (n, vocab);
        advances those rows. The same arithmetic as `__call__` per row, with each row's queries masked to its
        own keys."""
        (n,), H, hd, shape = tok.shape, self.cfg.n_head, self.hd, self.shape
        pos = cache.pos[:n]
        top = int(pos.max()) + 1
        if top > self.cfg.block_size:
            raise ValueError(f"KV cache is full ({top - 1} of block_size {self.cfg.block_size} positions)")
        S, L = cache.slots, self.cfg.block_size          # where each row's new keys and values go, as rows of
        base = (torch.arange(n, device=tok.device)[:, None] * 2 + torch.arange(2, device=tok.device)) * H  # kv
        dest = ((base[:, :, None] + torch.arange(H, device=tok.device)) * L + pos[:, None, None]).reshape(-1)
        mask = None                             # one row sees all its keys; several: an additive mask, made once
        if n > 1:
            mask = torch.zeros(n, 1, 1, top, device=tok.device, dtype=self.wte.dtype)
            mask.masked_fill_((torch.arange(top, device=tok.device) > pos[:, None])[:, None, None, :], float("-inf"))
        x = self.wte[tok] + self.wpe[pos]
        for (g1, b1, wqkv, bqkv, wo, bo, g2, b2, wfc, bfc, wp, bp), full in zip(self.layers, cache.kv):
            kv = full[:n]
            h = F.layer_norm(x, shape, g1, b1)
            qkv = (torch.mm(h, wqkv) if bqkv is None else torch.addmm(bqkv, h, wqkv)).view(n, 3, H, hd)
            full.view(S * 2 * H * L, hd).index_copy_(0, dest, qkv[:, 1:].reshape(-1, hd))
            y = F.scaled_dot_product_attention(qkv[:, 0].unsqueeze(2), kv[:, 0, :, :top], kv[:, 1, :, :top],
                                               attn_mask=mask)
            x = torch.addmm(x if bo is None else x + bo, y.view(n, -1), wo)
            h = F.layer_norm(x, shape, g2, b2)
            h = F.gelu(torch.mm(h, wfc) if bfc is None else torch.addmm(bfc, h, wfc))
            x = torch.addmm(x if bp is None else x + bp, h, wp)
        cache.pos[:n] += 1
        return torch.mm(F.layer_norm(x, shape, *self.ln_f), self.head)
