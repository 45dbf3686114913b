"""Sample quality for generated text without a likelihood: n-gram precision against held-out text.

precision_n = share of the n-grams (character n-grams, n = 2..4 by default) of the samples that occur
anywhere in the reference text. Real held-out text scores close to 1 for small n; random characters
score near 0 for n >= 3. It rewards plausible local spelling, not meaning or diversity (a model that
repeats one common word scores 1), so report it next to a likelihood-based figure.

distinct_n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"): the
number of distinct word n-grams over all samples divided by their total; a policy that says "good good good"
to every prompt scores near 0, varied text near 1. top_opening: the share of samples that begin with the most
common first word (a policy that learnt to open every answer the same way scores near 1)."""

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


def distinct_n(samples: list[str], n: int = 2) -> float:
    """Distinct word n-grams over all samples / all their word n-grams (0 when there are none)."""
    grams = [tuple(w[i:i + n]) for w in (s.lower().split() for s in samples) for i in range(len(w) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def top_opening(samples: list[str]) -> tuple[str, float]:
    """The most common first word of the samples (case-blind, punctuation stripped) and its share of them."""
    from collections import Counter

    firsts = Counter((s.split() or [""])[0].strip(".,;:!?'\"-").lower() for s in samples)
    word, count = firsts.most_common(1)[0] if firsts else ("", 0)
    return word, round(count / max(len(samples), 1), 4)
