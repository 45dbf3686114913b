"""`preferences`: pairs of responses to one prompt, the better one first, for preference tuning of a GPT.

A JSONL file, one {"prompt": ..., "chosen": ..., "rejected": ...} per line (other fields are ignored). The
held-out pairs are `data.eval_file` when given (the built-in task writes one from held-out prompts), else the
last 10% of the lines. Tokens come from the tokenizer of the run tuned from (--init-from); each prompt is put
into the run's chat template (`data.template`, "{prompt}" = as it is).

A batch holds B pairs, chosen response first:
    {"tokens": int64 (B, 2, T+1), "loss_mask": bool (B, 2, T)}    the mask marks the response's tokens as targets
(pairs stay whole when torchrun splits a batch by rows); the sum of masked log-probabilities is
log pi(response | prompt).

The built-in task (`aigc pairs`): prompts are the 32 characters of tiny-shakespeare that end with a
speaker's name line ("...\\n\\nJULIET:\\n"), so the completion is what the speaker says; the prompts of the
training split make the training pairs, those of the validation split (the corpus's last 10%) are held out.
The judge is aigc/metrics/sentiment.py."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aigc.data.text import Config as TextConfig
from aigc.data.text import apply_template, read_jsonl
from aigc.data.tokenizers import load_tokenizer
from aigc.errors import AigcError

KEYS = ("prompt", "chosen", "rejected")
PROMPT_CHARS = 32
SPEAKER = re.compile(r"\n\n[A-Z][A-Za-z' ]*:\n")


@dataclass
class Config(TextConfig):
    """Options of `preferences` (the tokenizer is the init run's)."""
    batch_size: int = 32             # pairs per step
    eval_file: str = ""              # held-out pairs (JSONL); "" = the last 10% of the file's lines
    judge: str = ""                  # "" | lexicon: the programmatic judge `aigc eval` reports on held-out prompts
    lm_text: str = ""                # text whose next-token loss is mixed in (model.ptx_weight); "" = the init
                                     # run's corpus


@dataclass
class Pair:
    prompt: np.ndarray                # int64 token ids of the templated prompt
    chosen: np.ndarray                # the responses (with end-of-text when the tokenizer has one)
    rejected: np.ndarray
    text: str = ""                    # the prompt as written in the file (before the template)


@dataclass
class PreferenceData:
    name: str
    tokenizer: object
    train: list[Pair]
    val: list[Pair]
    block_size: int
    template: str = "{prompt}"
    judge: str = ""
    note: str = ""
    lm: object = None                    # TokenData of data.lm_text when the next-token loss is mixed in

    def describe(self) -> str:
        return (f"{len(self.train)} preference pairs ({len(self.val)} held out), {self.tokenizer.kind} tokenizer "
                f"with {self.tokenizer.vocab_size} tokens")

    def eval_prompts(self) -> list[str]:
        """The distinct prompts of the held-out pairs (as written, before the template), in file order."""
        return list(dict.fromkeys(p.text for p in self.val))

    def eval_batches(self, batch_size: int, limit: int | None = None):
        pairs = self.val if limit is None else self.val[:limit * batch_size]
        for i in range(0, len(pairs), batch_size):
            yield pair_batch(pairs[i:i + batch_size], self.block_size)


def _sequence(prompt: np.ndarray, response: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """prompt + response cut to `limit` tokens (the prompt's start goes first, then the response's end); returns
    the tokens and the index of the first response token."""
    keep_prompt = max(1, min(len(prompt), limit - len(response)))
    p = prompt[len(prompt) - keep_prompt:]
    tokens = np.concatenate([p, response])[:limit]
    return tokens, len(p)


def response_batch(rows, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, response ids) rows as tokens int64 (N, T+1), zero-padded to the longest row (at most
    block_size + 1 tokens, cut by `_sequence`), and a mask bool (N, T) that marks the response's tokens as targets."""
    seqs = [_sequence(np.asarray(p, dtype=np.int64), np.asarray(r, dtype=np.int64), block_size + 1) for p, r in rows]
    T = max(len(t) for t, _ in seqs) - 1
    tokens = torch.zeros(len(seqs), T + 1, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for row, (t, start) in enumerate(seqs):
        tokens[row, :len(t)] = torch.from_numpy(t)
        mask[row, start - 1:len(t) - 1] = True              # the targets tokens[start:] are the response
    return tokens, mask


def pair_batch(pairs: list[Pair], block_size: int) -> dict:
    """B pairs as (B, 2, ...) tensors, [:, 0] chosen and [:, 1] rejected (`response_batch` rows)."""
    tokens, mask = response_batch([(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)], block_size)
    return {"tokens": tokens.view(len(pairs), 2, -1), "loss_mask": mask.view(len(pairs), 2, -1)}


class PairBatcher:
    """Random pairs of the training split; state = its generator. `online`: only the pairs' prompts, each with a
    seed for sampling its completions ({"prompt_ids": B int64 arrays, "prompts": their texts, "seeds": int64
    (B,)}): online DPO judges the policy's own completions instead of the file's responses (recipes/gpt.py)."""

    def __init__(self, data: PreferenceData, batch_size: int, seed: int, online: bool = False):
        from aigc.data.text import TokenBatcher

        self.data, self.batch_size, self.online = data, batch_size, online
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.lm = TokenBatcher(data.lm, batch_size, seed + 2) if data.lm is not None else None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        ix = torch.randint(len(self.data.train), (self.batch_size,), generator=self.generator)
        pairs = [self.data.train[i] for i in ix.tolist()]
        if self.online:
            batch = {"prompt_ids": [p.prompt for p in pairs], "prompts": [p.text for p in pairs],
                     "seeds": torch.randint(2 ** 62, (self.batch_size,), generator=self.generator)}
        else:
            batch = pair_batch(pairs, self.data.block_size)
        if self.lm is not None:                            # as many text windows as pairs (one row each)
            batch["lm_tokens"] = next(self.lm)["tokens"]
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), **({"lm": self.lm.state_dict()} if self.lm else {})}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if self.lm is not None:
            self.lm.load_state_dict(state["lm"])


def read_pairs(path: Path, tokenizer, template: str) -> list[Pair]:
    pairs = []
    eot = tokenizer.eot_id
    for lineno, d in read_jsonl(path, KEYS):
        if not d["prompt"] or not d["chosen"] or not d["rejected"]:
            raise AigcError(f"{path}:{lineno}: prompt, chosen and rejected must not be empty")
        try:
            ids = [tokenizer.encode(apply_template(template, d["prompt"]) if k == "prompt" else d[k]) for k in KEYS]
        except AigcError as e:
            raise AigcError(f"{path}:{lineno}: {e}") from None
        if eot is not None:
            ids[1], ids[2] = np.append(ids[1], eot), np.append(ids[2], eot)
        pairs.append(Pair(*(np.asarray(x, dtype=np.int64) for x in ids), text=d["prompt"]))
    return pairs


def load(cfg: Config, block_size: int = 64, tokenizer_path: Path | None = None) -> PreferenceData:
    if not cfg.dir or not Path(cfg.dir).is_file():
        raise AigcError("dataset 'preferences' needs --data-dir FILE.jsonl with one {\"prompt\": ..., \"chosen\": "
                        "..., \"rejected\": ...} per line (`aigc pairs RUN` makes one)")
    if tokenizer_path is None or not Path(tokenizer_path).is_file():
        raise AigcError("preference tuning starts from a trained model: add --init-from RUN (a gpt run)")
    if cfg.judge not in ("", "lexicon"):
        raise AigcError(f"data.judge must be '' or 'lexicon', got '{cfg.judge}'")
    tokenizer = load_tokenizer(tokenizer_path)
    pairs = read_pairs(Path(cfg.dir), tokenizer, cfg.template)
    if cfg.eval_file:
        if not Path(cfg.eval_file).is_file():
            raise AigcError(f"data.eval_file not found: {cfg.eval_file}")
        train, val = pairs, read_pairs(Path(cfg.eval_file), tokenizer, cfg.template)
    else:
        n_val = max(1, len(pairs) // 10)
        train, val = pairs[:-n_val], pairs[-n_val:]
    if not train or not val:
        raise AigcError(f"{cfg.dir} has {len(pairs)} pair(s); preference tuning needs at least 2 (one to train on, "
                        "one held out)")
    lm = None
    if cfg.lm_text:
        from aigc.config import data_config
        from aigc.data.text import load_token_data

        lm = load_token_data(data_config("text", dir=cfg.lm_text), block_size, tokenizer_path)
    return PreferenceData("preferences", tokenizer, train, val, block_size, cfg.template, cfg.judge, lm=lm)


# ---------------------------------------------------------------------------- the built-in task
def speaker_prompts(text: str, chars: int = PROMPT_CHARS) -> list[str]:
    """Every place in a play where a speaker's name line ends: the `chars` characters before (from a word start)."""
    out = []
    for m in SPEAKER.finditer(text):
        start = max(0, m.end() - chars)
        piece = text[start:m.end()]
        if start > 0 and not text[start - 1].isspace():          # begin at a word, not inside one
            cut = re.search(r"\s", piece)
            if cut.start() < m.start() - start:
                piece = piece[cut.end():]
        out.append(piece)
    return out


def task_prompts(text: str, chars: int = PROMPT_CHARS) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts): speaker prompts of the first 90% and of the last 10% of the
    corpus (the split the GPT's own validation uses), each without repeats."""
    cut = len(text) - len(text) // 10
    train = list(dict.fromkeys(speaker_prompts(text[:cut], chars)))
    held = [p for p in dict.fromkeys(speaker_prompts(text[cut:], chars)) if p not in set(train)]
    if not train or not held:
        raise AigcError("the corpus has no speaker lines ('NAME:' on a line of its own after a blank line); the "
                        "built-in preference task needs a play such as tiny-shakespeare")
    return train, held


def best_and_worst(rewards: list[float]) -> tuple[int, int] | None:
    """Indices of the first best- and the first worst-judged of one prompt's completions; None when all tie."""
    best, worst = int(np.argmax(rewards)), int(np.argmin(rewards))
    return (best, worst) if rewards[best] > rewards[worst] else None


def pairs_from_samples(prompts: list[str], completions: list[list[str]], rewards: list[list[float]]) -> list[dict]:
    """For each prompt: the best-judged completion as chosen, the worst as rejected (none when all tie)."""
    out = []
    for p, cs, rs in zip(prompts, completions, rewards):
        if picked := best_and_worst(rs):
            best, worst = picked
            out.append({"prompt": p, "chosen": cs[best], "rejected": cs[worst],
                        "chosen_reward": rs[best], "rejected_reward": rs[worst]})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
