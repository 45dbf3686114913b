"""Caption metrics: BLEU-4 (Papineni et al. 2002) by sacrebleu, and attribute accuracy of captions whose
attributes a parser can read (the built-in shapes and moving-shapes captions).

BLEU settings differ between captioning papers (tokenisation, number of references, smoothing), which makes
their figures hard to compare (Post 2018, "A Call for Clarity in Reporting BLEU Scores"); aigc reports sacrebleu's
corpus BLEU with its default 13a tokenisation and exponential smoothing, one reference per image, on the 0-100
scale, and writes its signature beside the figure. Captions are always decoded free-running (the model reads its
own previous words), never scored under teacher forcing."""

from __future__ import annotations

import torch


def bleu4(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU-4 of the hypotheses against one reference each: {"bleu4", "bleu_signature"}."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    score = bleu.corpus_score(list(hypotheses), [list(references)])
    return {"bleu4": round(score.score, 2), "bleu_signature": str(bleu.get_signature())}


def attribute_accuracy(read: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-attribute accuracy and `caption_accuracy` (every attribute right) of attributes read from captions
    (-1 where a caption does not name one: wrong) against the true ones, all int64 (N,)."""
    n = len(next(iter(truth.values())))
    all_ok = torch.ones(n, dtype=torch.bool)
    out = {}
    for key, want in truth.items():
        ok = read[key] == want
        all_ok &= ok
        out[f"{key}_accuracy"] = round(float(ok.double().mean()), 4)
    out["caption_accuracy"] = round(float(all_ok.double().mean()), 4)
    return out


def read_attributes(texts: list[str], parse, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """{key: int64 (N,)} read from each text by `parse` (text -> {key: index}); -1 where a text names none."""
    parsed = [parse(t) for t in texts]
    return {k: torch.tensor([p.get(k, -1) for p in parsed], dtype=torch.long) for k in keys}
