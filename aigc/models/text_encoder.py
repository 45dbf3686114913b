"""A small Transformer text encoder for captions (conditional GANs, text-to-image diffusion).

The built-in captions are short word sequences over a closed vocabulary (the shapes captions have 22 words,
`WordVocab`); a user's captioned folder brings its own words, read as byte-level BPE tokens
(aigc/data/tokenizers.CaptionTokens, an open vocabulary). Either way the encoder is tiny:
token + position embeddings, a few pre-LN Transformer encoder layers (no causal mask: every word sees the
whole caption), and a masked mean over the words. A caption with no known word (all attributes dropped, or
classifier-free guidance's empty prompt) maps to a *learned* null embedding rather than to zeros, so "no
condition" is something the networks can learn to use."""

from __future__ import annotations

import torch
import torch.nn as nn

PAD = 0
STOP_WORDS = {"a", "an", "the", "in", "of", "shape", "moving"}


class WordVocab:
    """Words -> ids (0 = padding). Unknown words are skipped."""

    def __init__(self, words: list[str], max_len: int = 12):
        self.words, self.max_len = list(words), max_len
        self.index = {w: i + 1 for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words) + 1

    def split(self, text: str) -> list[str]:
        return text.lower().replace(",", " ").split()

    def content_words(self, text: str) -> list[str]:
        """The known words of `text` that carry meaning (not 'a', 'the', 'in' ...)."""
        return [w for w in self.split(text) if w in self.index and w not in STOP_WORDS]

    def problem(self, prompt: str) -> str | None:
        """Why `prompt` cannot condition a model of this vocabulary (None: it can)."""
        known = ", ".join(w for w in self.words if w not in STOP_WORDS)
        if not self.content_words(prompt):
            return f"the prompt '{prompt}' has no word this model knows; known words: {known}"
        unknown = [w for w in self.split(prompt) if w not in self.index]
        if unknown:
            return (f"this model does not know {', '.join(repr(w) for w in unknown)}: leave "
                    f"{'it' if len(unknown) == 1 else 'them'} out or use words it knows: {known}")
        return None

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(B, max_len) int64, known words left-aligned, padded with 0."""
        out = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.index[w] for w in self.split(t) if w in self.index][:self.max_len]
            if ids:
                out[i, :len(ids)] = torch.tensor(ids)
        return out


def caption_vocab(cfg):
    """The caption vocabulary a model config names: `text_tokens` = words (WordVocab over `text_vocab`, the
    caption words) or bpe (CaptionTokens from `text_vocab`, its merges)."""
    from aigc.data.tokenizers import CaptionTokens

    return CaptionTokens(cfg.text_vocab) if cfg.text_tokens == "bpe" else WordVocab(cfg.text_vocab)


def caption_encoder(cfg, dim: int) -> "TextEncoder":
    """The TextEncoder for a model config's caption vocabulary (cfg.text_layers layers of width `dim`)."""
    vocab = caption_vocab(cfg)
    return TextEncoder(len(vocab), dim, cfg.text_layers, max_len=vocab.max_len)


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, dim: int, layers: int = 1, heads: int = 4, max_len: int = 12):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.null = nn.Parameter(torch.randn(dim) * 0.02)      # the learned empty condition

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) word ids, 0 = padding -> (B, dim)."""
        mask = ids != PAD
        empty = ~mask.any(1)
        safe = mask | empty[:, None]                  # attention needs one key per row; empty rows are replaced
        h = self.tok(ids) + self.pos[:ids.shape[1]]
        h = self.norm(self.blocks(h, src_key_padding_mask=~safe))
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.where(empty[:, None], self.null.expand_as(pooled), pooled)
