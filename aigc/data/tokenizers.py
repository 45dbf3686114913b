"""Tokenizers, saved inside the run (RUN/tokenizer.json) so that sampling decodes exactly.

- `char`: the corpus's own characters, sorted; unknown characters are an error that lists them.
- `bpe`: byte-level BPE trained on the corpus with the `tokenizers` library (GPT-2's scheme: every
  byte is in the base alphabet, so any text encodes and decodes losslessly)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aigc.errors import AigcError

EOT = "<|endoftext|>"
MIN_BPE_VOCAB = 257                      # the 256 byte tokens and EOT


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, texts, vocab_size: int = 0) -> "CharTokenizer":
        chars = set()
        for t in texts:
            chars.update(t)
        return cls(sorted(chars))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def eot_id(self) -> int | None:
        return None

    def unknown(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.stoi})

    def encode(self, text: str) -> np.ndarray:
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise AigcError(f"{len(missing)} character(s) are not in this model's vocabulary: {shown}")
        return np.fromiter((self.stoi[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"aigc_tokenizer": "char", "chars": self.chars}, ensure_ascii=False)


class BPETokenizer:
    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, texts, vocab_size: int = 2048, prefix_space: bool = False) -> "BPETokenizer":
        """`prefix_space`: read every text as if it began with a space, so a word is one token wherever it stands
        (right for short captions; a corpus's first word is a single case)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < MIN_BPE_VOCAB:
            raise AigcError(f"data.vocab_size must be at least {MIN_BPE_VOCAB} for the bpe tokenizer (its 256 byte "
                            f"tokens and end-of-text), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def eot_id(self) -> int | None:
        return self.tok.token_to_id(EOT)

    def unknown(self, text: str) -> list[str]:
        return []                                   # byte-level: nothing is unknown

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self.tok.decode(list(map(int, ids)), skip_special_tokens=False)

    def to_json(self) -> str:
        return self.tok.to_str()


class CaptionTokens:
    """Captions as byte-level BPE tokens for the caption encoder of text-conditional image models trained on a
    user's captions: an open vocabulary (every byte is a token, so any prompt encodes) whose merges are learned
    from the training captions (lowercased). The tokenizer is rebuilt from its merges alone, which the model
    config keeps (`model.text_vocab`), so config.toml stays enough to rebuild the model. Ids start at 1: 0 is
    padding."""

    def __init__(self, merges: list[str], max_len: int = 32):
        from tokenizers import Tokenizer, models, pre_tokenizers

        self.merges, self.max_len = list(merges), max_len
        vocab = {"<pad>": 0}
        for t in sorted(pre_tokenizers.ByteLevel.alphabet()):
            vocab[t] = len(vocab)
        pairs = [tuple(m.split(" ")) for m in self.merges]
        for a, b in pairs:
            vocab.setdefault(a + b, len(vocab))
        self.tok = Tokenizer(models.BPE(vocab, pairs))
        self.tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        self.size = len(vocab)

    @classmethod
    def train(cls, texts: list[str], vocab_size: int = 512) -> "CaptionTokens":
        """Learn merges from the captions until the vocabulary has `vocab_size` tokens or no pair repeats."""
        bpe = BPETokenizer.train([t.lower() for t in texts], max(vocab_size, MIN_BPE_VOCAB), prefix_space=True)
        merges = json.loads(bpe.to_json())["model"]["merges"]
        return cls([m if isinstance(m, str) else " ".join(m) for m in merges])

    def __len__(self) -> int:
        return self.size

    def encode(self, texts: list[str]):
        """(B, max_len) int64 token ids, left-aligned, padded with 0 (the empty caption is all padding)."""
        import torch

        out = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.tok.encode(t.lower()).ids[:self.max_len] if t.strip() else []
            if ids:
                out[i, :len(ids)] = torch.tensor(ids)
        return out

    def problem(self, prompt: str) -> str | None:
        """Why `prompt` cannot condition the model (None: it can; any non-empty text can)."""
        return None if prompt.strip() else "the prompt is empty"


TOKENIZERS = {"char": CharTokenizer, "bpe": BPETokenizer}


def load_tokenizer(path: Path):
    path = Path(path)
    if not path.is_file():
        raise AigcError(f"no tokenizer at {path}")
    text = path.read_text(encoding="utf-8")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise AigcError(f"tokenizer file {path} is corrupt: {e}") from None
    if d.get("aigc_tokenizer") == "char":
        return CharTokenizer(d["chars"])
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_str(text))
