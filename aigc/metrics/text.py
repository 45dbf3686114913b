"""Sample quality for generated text without a likelihood: n-gram precision against held-out text.

precision_n = share of the n-grams (character n-grams, n = 2..4 by default) of the samples that occur
anywhere in the reference text. Real held-out text scores close to 1 for small n; random characters
score near 0 for n >= 3. It rewards plausible local spelling, not meaning or diversity (a model that
repeats one common word scores 1), so report it next to a likelihood-based figure."""

from __future__ import annotations


def ngram_set(text: str, n: int) -> set[str]:
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def ngram_precision(samples: list[str], reference: str | dict[int, set], ns=(2, 3, 4)) -> dict[str, float]:
    """{'ngram_precision_2': ..., ...}; `reference` is the text or {n: its n-gram set} (reuse across calls)."""
    sets = reference if isinstance(reference, dict) else {n: ngram_set(reference, n) for n in ns}
    out = {}
    for n in ns:
        grams = [s[i:i + n] for s in samples for i in range(len(s) - n + 1)]
        out[f"ngram_precision_{n}"] = round(sum(g in sets[n] for g in grams) / max(len(grams), 1), 4)
    return out
