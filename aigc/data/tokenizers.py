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
    def train(cls, texts, vocab_size: int = 2048) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < MIN_BPE_VOCAB:
            raise AigcError(f"data.vocab_size must be at least {MIN_BPE_VOCAB} for the bpe tokenizer (its 256 byte "
                            f"tokens and end-of-text), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
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
