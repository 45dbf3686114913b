"""Text and code corpora for language models.

`text`: a UTF-8 file or a folder of files; `code`: the `*.py` files under a folder (default: the
running Python's standard library, so code generation works with nothing downloaded). The token
stream is encoded once per (corpus, tokenizer) into a flat uint16/uint32 file in the cache and
memory-mapped, so corpora larger than RAM work; the first 90% of tokens train, the last 10% validate.
`sft`: a JSONL file of {"prompt": ..., "response": ...} for supervised fine-tuning (loss on the
response tokens only)."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aigc.config import DataConfig
from aigc.data.tokenizers import TOKENIZERS, load_tokenizer
from aigc.errors import AigcError, check_choice, did_you_mean
from aigc.io import cache

ENCODING_ERRORS = ("strict", "replace", "skip")


def corpus_files(kind: str, folder: str) -> list[Path]:
    if kind == "code" and not folder:
        folder = sysconfig.get_paths()["stdlib"]
    if not folder:
        raise AigcError("dataset 'text' needs --data-dir FILE_OR_FOLDER (UTF-8 text)")
    root = Path(folder)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise AigcError(f"corpus not found: {root}")
    pattern = "*.py" if kind == "code" else "*"
    files = sorted(p for p in root.rglob(pattern) if p.is_file() and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts))
    if not files:
        raise AigcError(f"no {'*.py ' if kind == 'code' else ''}files found under {root}")
    return files


def read_text(path: Path, errors: str) -> str | None:
    """UTF-8 text of a file; None when `errors` is 'skip' and the file is not valid UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if errors == "replace":
            return raw.decode("utf-8", errors="replace")
        if errors == "skip":
            return None
        raise AigcError(f"{path} is not valid UTF-8 (byte offset {e.start}: {raw[e.start:e.start + 4]!r}); "
                        "pass --set encoding_errors=replace to substitute, or =skip to leave such files out") from None


def read_corpus(kind: str, folder: str, errors: str, max_chars: int = 0) -> tuple[list[str], list[Path], int]:
    """(texts, files, number skipped). `max_chars` > 0 stops reading once that many characters are in."""
    check_choice("data.encoding_errors", errors, ENCODING_ERRORS)
    texts, used, skipped, total = [], [], 0, 0
    for f in corpus_files(kind, folder):
        t = read_text(f, errors)
        if t is None:
            skipped += 1
            continue
        if t:
            texts.append(t)
            used.append(f)
            total += len(t)
        if max_chars and total >= max_chars:
            break
    if not texts:
        raise AigcError(f"the corpus at {folder or 'the standard library'} is empty")
    return texts, used, skipped


@dataclass
class Config(DataConfig):
    """Options of `text`, `code` and `sft`."""
    tokenizer: str = "char"          # char | bpe
    vocab_size: int = 2048           # bpe: vocabulary size
    encoding_errors: str = ""        # strict | replace | skip ("" = strict for text, skip for code)
    max_chars: int = 0               # read at most this many characters (0 = all)
    template: str = "{prompt}"       # sft / preferences: the chat template each prompt is put into


@dataclass
class TokenData:
    """A language-modelling dataset: flat token streams and the tokenizer."""
    name: str
    tokenizer: object
    train: np.ndarray                      # memory-mapped token ids
    val: np.ndarray
    block_size: int
    note: str = ""
    sft: list | None = None                # SFT: list of (tokens int64 (L,), loss_mask bool (L-1,))
    sft_val: list | None = None

    def describe(self) -> str:
        n = len(self.sft) if self.sft is not None else len(self.train)
        what = "examples" if self.sft is not None else "training tokens"
        return f"{n} {what}, {self.tokenizer.kind} tokenizer with {self.tokenizer.vocab_size} tokens"

    def eval_windows(self, batch_size: int, limit: int | None = None):
        """Non-overlapping windows over the whole val split: every val token after the first is
        predicted exactly once (the last window may be shorter). Yields {"tokens": (B, T+1)}."""
        if self.sft is not None:
            yield from sft_batches(self.sft_val, self.block_size, batch_size, limit)
            return
        n, T = len(self.val), self.block_size
        starts = list(range(0, n - 1, T))
        if limit is not None:
            starts = starts[:limit * batch_size]
        full = [s for s in starts if s + T + 1 <= n]
        for i in range(0, len(full), batch_size):
            idx = np.asarray(full[i:i + batch_size])[:, None] + np.arange(T + 1)
            yield {"tokens": torch.from_numpy(self.val[idx].astype(np.int64))}
        rest = [s for s in starts if s + T + 1 > n]
        for s in rest:
            yield {"tokens": torch.from_numpy(self.val[s:n].astype(np.int64))[None]}


def sft_batches(examples, block_size, batch_size, limit=None, index=None):
    """Pad/crop (tokens, mask) examples to block_size+1; padded positions carry no loss."""
    order = range(len(examples)) if index is None else index
    order = list(order)
    if limit is not None:
        order = order[:limit * batch_size]
    for i in range(0, len(order), batch_size):
        chunk = [examples[j] for j in order[i:i + batch_size]]
        T = min(block_size, max(len(t) - 1 for t, _ in chunk))
        tokens = torch.zeros(len(chunk), T + 1, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.bool)
        for r, (t, m) in enumerate(chunk):
            t, m = t[:T + 1], m[:T]
            tokens[r, :len(t)] = torch.from_numpy(t)
            mask[r, :len(m)] = torch.from_numpy(m)
        yield {"tokens": tokens, "loss_mask": mask}


class TokenBatcher:
    """Random windows of block_size + 1 tokens (or random SFT examples); state = its generator."""

    def __init__(self, data: TokenData, batch_size: int, seed: int):
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(seed + 1)
        n = len(data.sft) if data.sft is not None else len(data.train) - data.block_size - 1
        if n < 1:
            raise AigcError(f"the training split has {len(data.train)} tokens, fewer than one block of "
                            f"{data.block_size + 1}; use a longer corpus or a smaller model.block_size")
        self.high = n

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        ix = torch.randint(self.high, (self.batch_size,), generator=self.generator)
        if self.data.sft is not None:
            return next(sft_batches(self.data.sft, self.data.block_size, self.batch_size, index=ix.tolist()))
        idx = ix.numpy()[:, None] + np.arange(self.data.block_size + 1)
        return {"tokens": torch.from_numpy(self.data.train[idx].astype(np.int64))}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _encode_to_file(tokenizer, texts: list[str], path: Path, sep) -> int:
    """Encode text by text, appending to a flat binary file (never the whole stream in memory)."""
    dtype = np.uint16 if tokenizer.vocab_size < 2 ** 16 else np.uint32
    tmp = path.with_suffix(".tmp")
    n = 0
    with open(tmp, "wb") as f:
        for i, t in enumerate(texts):
            ids = tokenizer.encode(t)
            if sep is not None and i < len(texts) - 1:
                ids = np.append(ids, sep)
            f.write(ids.astype(dtype).tobytes())
            n += len(ids)
    tmp.replace(path)
    return n


def load_token_data(cfg: Config, block_size: int = 256, tokenizer_path: Path | None = None) -> TokenData:
    """The token streams of `text` or `code`, or the examples of `sft`, in windows of block_size + 1 tokens;
    the tokenizer is read from `tokenizer_path` when it exists, else trained on the corpus."""
    kind = cfg.name
    if cfg.tokenizer not in TOKENIZERS:
        raise AigcError(f"unknown tokenizer '{cfg.tokenizer}'{did_you_mean(cfg.tokenizer, TOKENIZERS)}")
    if kind == "sft":
        return _load_sft(cfg, block_size, tokenizer_path)
    errors = cfg.encoding_errors or ("skip" if kind == "code" else "strict")
    texts, files, skipped = read_corpus(kind, cfg.dir, errors, cfg.max_chars)
    if tokenizer_path is not None and Path(tokenizer_path).is_file():
        tokenizer = load_tokenizer(tokenizer_path)
    else:
        tokenizer = TOKENIZERS[cfg.tokenizer].train(texts, cfg.vocab_size)
    key = hashlib.sha256()               # the cache is keyed by the text itself: a file rewritten with the same
    for t in texts:                      # size and time is a new corpus (paths, sizes and times were not enough)
        key.update(f"{len(t)}\n".encode())
        key.update(t.encode("utf-8", "surrogatepass"))
    key.update(f"{errors}|{cfg.max_chars}".encode())
    key.update(tokenizer.to_json().encode())
    folder = cache.cache_dir("tokens") / key.hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    stream = folder / "tokens.bin"
    if not stream.is_file():
        _encode_to_file(tokenizer, texts, stream, tokenizer.eot_id)
        (folder / cache.SOURCE).write_text(json.dumps({"dataset": kind, "dir": str(cfg.dir),
                                                      "tokenizer": cfg.tokenizer, "files": len(files)}))
    cache.touch(folder)
    dtype = np.uint16 if tokenizer.vocab_size < 2 ** 16 else np.uint32
    tokens = np.memmap(stream, dtype=dtype, mode="r")
    n_val = len(tokens) // 10
    train, val = tokens[:len(tokens) - n_val], tokens[len(tokens) - n_val:]
    if len(train) < block_size + 2 or len(val) < 2:
        raise AigcError(f"the corpus has {len(tokens)} tokens: too short for one block of {block_size + 1} "
                        f"(90% train / 10% val); use a longer corpus or a smaller model.block_size")
    note = f"skipped {skipped} file(s) that are not valid UTF-8" if skipped else ""
    return TokenData(kind, tokenizer, train, val, block_size, note)


def read_jsonl(path: Path, keys: tuple[str, ...]):
    """(line number, object) for every non-blank line of a JSONL file whose objects have string fields `keys`;
    a clear error naming the line otherwise."""
    text = read_text(path, "strict")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise AigcError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in keys):
            raise AigcError(f"{path}:{lineno}: expected an object with string fields "
                            f"{', '.join(repr(k) for k in keys)}".replace("'", '"'))
        yield lineno, d


def apply_template(template: str, prompt: str) -> str:
    """The chat template around one user message: 'User: {prompt}\nBot: ' makes 'User: hi\nBot: '."""
    if template.count("{prompt}") != 1:
        raise AigcError(f"data.template must contain '{{prompt}}' once (where the user's message goes), got "
                        f"{template!r}")
    return template.replace("{prompt}", prompt)


def _load_sft(cfg, block_size: int, tokenizer_path: Path | None) -> TokenData:
    if not cfg.dir or not Path(cfg.dir).is_file():
        raise AigcError("dataset 'sft' needs --data-dir FILE.jsonl with one {\"prompt\": ..., \"response\": "
                        "...} per line")
    if tokenizer_path is None or not Path(tokenizer_path).is_file():
        raise AigcError("supervised fine-tuning starts from a trained model: add --init-from RUN (a gpt run)")
    tokenizer = load_tokenizer(tokenizer_path)
    path = Path(cfg.dir)
    examples = []
    for lineno, d in read_jsonl(path, ("prompt", "response")):
        try:
            p, r = tokenizer.encode(apply_template(cfg.template, d["prompt"])), tokenizer.encode(d["response"])
        except AigcError as e:
            raise AigcError(f"{path}:{lineno}: {e}") from None
        if tokenizer.eot_id is not None:
            r = np.append(r, tokenizer.eot_id)
        tokens = np.concatenate([p, r]).astype(np.int64)
        mask = np.zeros(len(tokens) - 1, dtype=bool)
        mask[len(p) - 1:] = True                 # targets tokens[len(p):] = the response
        if len(p) == 0 or len(r) == 0:
            raise AigcError(f"{path}:{lineno}: prompt and response must not be empty")
        examples.append((tokens, mask))
    if len(examples) < 2:
        raise AigcError(f"{path} has {len(examples)} example(s); supervised fine-tuning needs at least 2")
    n_val = max(1, len(examples) // 10)
    empty = np.zeros(0, dtype=np.int64)
    return TokenData("sft", tokenizer, empty, empty, block_size, sft=examples[:-n_val], sft_val=examples[-n_val:])


load = load_token_data
