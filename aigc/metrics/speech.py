"""Word error rate of generated speech, read by a small recogniser trained once on real (synthesised) speech.

The recogniser: log-mel frames -> a 1-D convolution, a second with stride 2, then residual dilated 1-D convolutions
(dilations 1, 2, 4, 1: about 0.6 s of context, so it hears words more than phrases; all frames in parallel, which
keeps its training to a CPU minute or two) -> per-frame word posteriors, trained with CTC (Graves et al. 2006) over
word tokens (blank = token 0, the pause), greedy decoding. It trains on the training voices only: half its examples
are utterances as recorded, half are spliced from random words of them (the data knows every word's frames), so
that it hears words in any order and less of a prior for the data's phrases; with light augmentation (a random
gain in dB, a time mask). It is cached like the feature classifier (AIGC_CACHE/classifiers), keyed by a digest of
its data. Word error rate = (substitutions + deletions + insertions) / reference words, summed over utterances
(Levenshtein over words)."""

from __future__ import annotations

import json
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc.io import cache

RECOGNISER_VERSION = 2


class Recogniser(nn.Module):
    DILATIONS = (1, 2, 4, 1)

    def __init__(self, n_mels: int, vocab: int, width: int = 128):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, stride=2, padding=2)
        self.blocks = nn.ModuleList(nn.Conv1d(width, width, 3, padding=d, dilation=d) for d in self.DILATIONS)
        self.norms = nn.ModuleList(nn.GroupNorm(1, width) for _ in self.DILATIONS)
        self.out = nn.Conv1d(width, vocab, 1)
        self.meta = {"n_mels": n_mels, "vocab": vocab, "width": width}

    def forward(self, mel: torch.Tensor) -> torch.Tensor:          # (B, T, n_mels) -> log-probs (B, T/2, vocab)
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel.transpose(1, 2)))))
        for conv, norm in zip(self.blocks, self.norms):
            x = x + F.gelu(conv(norm(x)))
        return self.out(x).transpose(1, 2).log_softmax(-1)

    @staticmethod
    def out_lengths(mel_len: torch.Tensor) -> torch.Tensor:
        return (mel_len - 1) // 2 + 1


def edit_distance(a: list, b: list) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def word_error_rate(hyps: list[str], refs: list[str]) -> float:
    errors = sum(edit_distance(h.split(), r.split()) for h, r in zip(hyps, refs))
    return round(errors / max(sum(len(r.split()) for r in refs), 1), 4)


def _pad(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.nn.utils.rnn import pad_sequence

    return pad_sequence(mels, batch_first=True), torch.tensor([len(m) for m in mels])


def train_recogniser(draw, n_mels: int, vocab: int, steps: int = 1500, batch_size: int = 32, seed: int = 0,
                     progress: bool = False) -> Recogniser:
    """CTC training with AdamW and a one-cycle LR on examples from `draw(generator, n)` -> (log-mels (T, n_mels) in
    [0, 1], word ids >= 1), each with a random gain and one time mask."""
    from tqdm import tqdm

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = Recogniser(n_mels, vocab)
        opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.15)
        net.train()
        for _ in tqdm(range(steps), desc="word recogniser", unit="step", file=sys.stderr, disable=not progress,
                      mininterval=0.5 if sys.stderr.isatty() else 30):
            mels, targets = draw(g, batch_size)
            x, lens = _pad(mels)
            x = x + (torch.rand(len(x), 1, 1, generator=g) - 0.5) * 0.15          # gain of +-6 dB
            for b in range(len(x)):                                               # one time mask each
                w = int(torch.randint(0, 8, (1,), generator=g))
                s = int(torch.randint(0, max(1, int(lens[b]) - w), (1,), generator=g))
                x[b, s:s + w] = 0
            x = x.clamp(0, 1)
            ys = [torch.tensor(t) for t in targets]
            logp = net(x)
            loss = F.ctc_loss(logp.transpose(0, 1), torch.cat(ys), Recogniser.out_lengths(lens),
                              torch.tensor([len(y) for y in ys]), blank=0, zero_infinity=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def transcribe(net: Recogniser, mels: list[torch.Tensor], words: tuple[str, ...], batch_size: int = 64) -> list[str]:
    """Greedy CTC decoding of log-mels (T, n_mels) -> texts; `words[i]` is the word of token i (0 = blank)."""
    order = sorted(range(len(mels)), key=lambda i: len(mels[i]))     # similar lengths batch together
    texts = [""] * len(mels)
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        x, lens = _pad([mels[i] for i in idx])
        best = net(x).argmax(-1)
        for row, i, n in zip(best, idx, Recogniser.out_lengths(lens).tolist()):
            ids = torch.unique_consecutive(row[:n]).tolist()
            texts[i] = " ".join(words[t] for t in ids if t != 0)
    return texts


def get_recogniser(name: str, draw, n_mels: int, vocab: int, key_digest: str, steps: int = 1500,
                   log=None) -> tuple[Recogniser, dict]:
    """The cached recogniser for this data (trained the first time); returns (net, info)."""
    key = f"{name}-recogniser-v{RECOGNISER_VERSION}-{key_digest}"
    cached = cache.load_weights("classifiers", key)
    if cached is not None:
        state, meta = cached
        net = Recogniser(meta["n_mels"], meta["vocab"], meta["width"])
        net.load_state_dict(state)
        return net.eval(), {**meta, "key": key, "reused": True}
    if log:
        log(f"training the {name} word recogniser once, for the word error rate (cached in "
            f"{cache.cache_dir('classifiers')}) ...")
    net = train_recogniser(draw, n_mels, vocab, steps, progress=log is not None)
    meta = {**net.meta, "dataset": name}
    cache.save_weights("classifiers", key, net.state_dict(), meta)
    return net, {**meta, "key": key, "reused": False}


def cache_info(info: dict) -> None:
    """Keep what was measured with a cached recogniser (its floors) in its JSON beside it."""
    path = cache.cache_dir("classifiers") / f"{info['key']}.json"
    if path.is_file():
        path.write_text(json.dumps({k: v for k, v in info.items() if k not in ("key", "reused")}))
