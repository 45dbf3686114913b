"""A programmatic judge of sentiment: the ground-truth reward of aigc's built-in preference task.

reward(text) = (number of positive words) - (number of negative words), words matched whole and
case-blind against two fixed lexicons of Shakespeare's English. A completion is *positive* when its
reward is > 0. This stands in for the sentiment classifier that Rafailov et al. (2023, "Direct Preference
Optimization", the IMDb task) use as the ground-truth reward: a program, so every figure can be checked and
nothing is learned from the data it judges. It counts words, not meaning ("not love" is positive)."""

from __future__ import annotations

import re

POSITIVE = frozenset("""
love loves loved loving lover lovers lovely beloved joy joys joyful rejoice glad gladly happy happiness
sweet sweetly sweetest fair fairest good gentle gently kind kindly kindness dear dearest bless blessed
blessing grace gracious noble honour honest merry mirth peace heaven heavenly delight delights smile smiles
pleasure pleasant hope friend friends friendly comfort content true truly worthy brave bright beauty
beautiful precious virtue virtuous wise welcome thank thanks laugh laughter
""".split())

NEGATIVE = frozenset("""
death dead die dies died dying hate hated hateful foul kill killed kills murder murdered murderer blood
bloody grief grieve woe woeful curse cursed villain villains traitor traitors false evil fear fears
sorrow sorrows weep tears poison plague war wars wretch wretched shame shameful slain slay vile base
cruel despair misery miserable tyrant wicked sin sins damn damned hell wound wounds grave fool enemy
enemies revenge rage dread pain strike
""".split())

WORD = re.compile(r"[a-z]+")


def lexicon_reward(text: str) -> int:
    """Positive minus negative lexicon words in `text`."""
    words = WORD.findall(text.lower())
    return sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)


class LexiconJudge:
    """judge(prompts, completions) -> rewards; the prompt is not read (the completion alone is judged).
    `positive`: 1 for a positive completion, else 0 (the judge's verdict rather than its count)."""

    def __init__(self, positive: bool = False):
        self.positive = positive

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        if self.positive:
            return [float(lexicon_reward(c) > 0) for c in completions]
        return [float(lexicon_reward(c)) for c in completions]


def judge_report(rewards: list[float]) -> dict:
    """Mean reward and the share of positive (reward > 0) completions."""
    n = max(len(rewards), 1)
    return {"reward": round(sum(rewards) / n, 4), "positive_rate": round(sum(r > 0 for r in rewards) / n, 4)}
