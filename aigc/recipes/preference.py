"""Preference tuning of a GPT: the losses, best-of-N, and the measures of the reward-KL trade-off.

- DPO (Rafailov et al. 2023, eq. 7): with the implicit reward r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)),
      L = -log sigmoid(r(x, y_chosen) - r(x, y_rejected)),
  the policy pi is trained, the reference pi_ref (the model tuned from) stays frozen. An optional SFT term adds
  sft_weight * (mean NLL per token of the chosen responses): the common fix for chosen log-probabilities that
  fall while the margin grows (Pal et al. 2024; trl issue 800).
- IPO (Azar et al. 2023, eq. 17): L = (h - 1/(2 beta))^2 with h = log-ratio(chosen) - log-ratio(rejected); it
  regresses the margin to a finite target where DPO pushes it to infinity on pairs whose preference is certain.
- Reward model (Christiano et al. 2017; Ouyang et al. 2022): the GPT backbone with a scalar head read at the
  response's last token, trained with the Bradley-Terry loss  L = -log sigmoid(r(x, y_chosen) - r(x, y_rejected)).
- Best-of-N: N samples, the judge keeps the best. Its KL to the model sampled from is at most
  log N - (N - 1) / N (Stiennon et al. 2020, appendix; Beirami et al. 2024 show it is an upper bound).
- KL(pi || pi_ref) of a tuned model: the mean over prompts of sum_t log pi(y_t|...) - log pi_ref(y_t|...) on
  completions y sampled from pi at temperature 1 (an unbiased estimate of the sequence-level KL).

Metric names follow trl's DPOTrainer: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
logps/chosen, logps/rejected."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aigc.errors import AigcError
from aigc.recipes.textgen import SLOTS, TextEngine, TextStream, row_seed

OBJECTIVES = ("lm", "dpo", "reward")
DPO_LOSSES = ("sigmoid", "ipo")


def response_logps(model, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(target) over the masked targets of each row: tokens (B, T+1), mask (B, T) -> (B,)."""
    logits = model(tokens[:, :-1]).float()
    logp = torch.gather(F.log_softmax(logits, -1), 2, tokens[:, 1:, None]).squeeze(2)
    return (logp * mask).sum(1)


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta: float,
             kind: str = "sigmoid") -> tuple[torch.Tensor, dict]:
    """The DPO (kind "sigmoid") or IPO (kind "ipo") loss of a batch of pairs from the sequence log-probabilities
    under policy and reference; the logged rewards are beta * log-ratio either way."""
    r_chosen = beta * (pi_chosen - ref_chosen)
    r_rejected = beta * (pi_rejected - ref_rejected)
    if kind == "ipo":
        h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
        loss = ((h - 1 / (2 * beta)) ** 2).mean()
    else:
        loss = -F.logsigmoid(r_chosen - r_rejected).mean()
    return loss, {"rewards/chosen": r_chosen.mean().detach(), "rewards/rejected": r_rejected.mean().detach(),
                  "rewards/margins": (r_chosen - r_rejected).mean().detach(),
                  "rewards/accuracies": (r_chosen > r_rejected).float().mean(),
                  "logps/chosen": pi_chosen.mean().detach(), "logps/rejected": pi_rejected.mean().detach()}


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """-log P(chosen > rejected) with P = sigmoid(r_chosen - r_rejected) (Bradley & Terry 1952)."""
    loss = -F.logsigmoid(r_chosen - r_rejected).mean()
    return loss, {"accuracy": (r_chosen > r_rejected).float().mean(),
                  "margin": (r_chosen - r_rejected).mean().detach()}


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last token (the last masked target), from a loss mask (B, T)."""
    T = mask.shape[1]
    return T - torch.flip(mask, [1]).float().argmax(1)


def best_of_n_kl(n: int) -> float:
    """The upper bound log N - (N-1)/N on KL(best-of-N || base), in nats per completion."""
    return math.log(n) - (n - 1) / n


# ---------------------------------------------------------------------------- judges
class RewardJudge:
    """A trained reward-model run as a judge: judge(prompts, completions) -> its scalar rewards."""

    def __init__(self, recipe):
        self.recipe = recipe

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], batch: int = 64) -> list[float]:
        """Prompt (in the run's chat template) and completion encoded and cut as its training pairs were."""
        from aigc.data.preferences import response_batch
        from aigc.data.text import apply_template

        r = self.recipe
        tok, window = r.tokenizer, r.window(r.cfg)
        out = []
        for i in range(0, len(prompts), batch):
            rows = [(tok.encode(apply_template(r.cfg.data.template, p)), tok.encode(c))
                    for p, c in zip(prompts[i:i + batch], completions[i:i + batch])]
            tokens, mask = response_batch(rows, window)
            out += r.reward(tokens.to(r.device_of()), last_positions(mask).to(r.device_of())).tolist()
        return out


def load_judge(spec: str | None, device=None):
    """'lexicon' (the built-in task's sentiment judge: positive minus negative words), 'lexicon-positive' (its
    verdict: 1 for a positive completion, else 0) or the folder of a gpt run trained with objective=reward."""
    if not spec:
        raise AigcError("best-of-N needs a judge: --judge lexicon (the built-in sentiment judge) or --judge RUN "
                        "(a gpt run trained with objective=reward)")
    if spec in ("lexicon", "lexicon-positive"):
        from aigc.metrics.sentiment import LexiconJudge

        return LexiconJudge(positive=spec == "lexicon-positive")
    from aigc.io import rundir
    from aigc.recipes import open_run

    run_dir = rundir.check_run_dir(spec)
    cfg, recipe = open_run(run_dir, device or torch.device("cpu"))
    if cfg.family != "gpt" or getattr(cfg.model, "objective", "lm") != "reward":
        raise AigcError(f"--judge {spec} is not a reward model (a gpt run trained with --set objective=reward)")
    return RewardJudge(recipe)


# ---------------------------------------------------------------------------- sampling for measurements
def sample_completions(model, tokenizer, prompt_ids: list[list[int]], n: int, max_new_tokens: int, seed: int,
                       temperature: float = 1.0) -> list[TextStream]:
    """n completions of every prompt (prompt i, sample j from row_seed(seed, i * n + j)), decoded in batches."""
    streams = [TextStream(list(ids), max_new_tokens, temperature, None, None, row_seed(seed, i * n + j))
               for i, ids in enumerate(prompt_ids) for j in range(n)]
    return run_streams(model, tokenizer, streams)


def run_streams(model, tokenizer, streams: list[TextStream]) -> list[TextStream]:
    """Decode the streams in batches of up to 4 x SLOTS; the model's train/eval mode is left as it was."""
    was = model.training
    try:
        TextEngine(model, tokenizer, min(SLOTS * 4, len(streams))).run(streams)
    finally:
        model.train(was)
    return streams


@torch.no_grad()
def online_pairs(model, tokenizer, judge, prompt_ids: list, prompts: list[str], seeds: list[int], k: int,
                 max_new_tokens: int) -> tuple[list, dict]:
    """Online DPO's pairs: k completions of each prompt from `model` (temperature 1, sample j of prompt i from
    row_seed(seeds[i], j)), judged; the best and the worst make a Pair unless all k tie. Logs the judge's mean
    reward and positive share of the completions (the policy's own, as it trains) and the share of prompts that
    gave a pair."""
    from aigc.data.preferences import Pair, best_and_worst
    from aigc.metrics.sentiment import judge_report

    streams = [TextStream([int(t) for t in ids], max_new_tokens, 1.0, None, None, row_seed(seed, j))
               for ids, seed in zip(prompt_ids, seeds) for j in range(k)]
    run_streams(model, tokenizer, streams)
    rewards = judge([p for p in prompts for _ in range(k)], [s.text for s in streams])
    pairs = []
    for i, ids in enumerate(prompt_ids):
        if picked := best_and_worst(rewards[i * k:(i + 1) * k]):
            pairs.append(Pair(ids, *(np.asarray(streams[i * k + j].tokens, dtype=np.int64) for j in picked)))
    report = judge_report(rewards)
    return pairs, {"online/reward": torch.tensor(report["reward"]),
                   "online/positive_rate": torch.tensor(report["positive_rate"]),
                   "online/pair_rate": torch.tensor(len(pairs) / max(len(prompt_ids), 1))}


@torch.no_grad()
def completion_logps(model, streams: list[TextStream], block_size: int, batch: int = 128) -> torch.Tensor:
    """log p(completion | prompt) under `model` for each stream's generated tokens (cut to fit as training pairs
    are: data/preferences.py response_batch)."""
    from aigc.data.preferences import response_batch

    out = []
    dev = next(model.parameters()).device
    for i in range(0, len(streams), batch):
        tokens, mask = response_batch([(s.prompt, s.tokens) for s in streams[i:i + batch]], block_size)
        out.append(response_logps(model, tokens.to(dev), mask.to(dev)).cpu())
    return torch.cat(out)


def sampled_kl(policy, reference, streams: list[TextStream], block_size: int) -> float:
    """KL(policy || reference) in nats per completion, estimated on completions sampled from the policy at
    temperature 1: the mean of log pi(y|x) - log pi_ref(y|x)."""
    kl = completion_logps(policy, streams, block_size) - completion_logps(reference, streams, block_size)
    return round(kl.mean().item(), 4)


def win_rate(rewards: list[float], others: list[float]) -> float:
    """Share of `rewards` above the `others` of the same prompts, ties counting half."""
    return round(sum((a > b) + 0.5 * (a == b) for a, b in zip(rewards, others)) / max(len(rewards), 1), 4)


def judge_policy(policy, reference, tokenizer, block_size: int, prompts: list[str], prompt_ids: list[list[int]],
                 judge, max_new_tokens: int = 32, seed: int = 0) -> dict:
    """On held-out prompts, one completion each from the policy (temperature 1): the judge's mean `reward`, the
    share of positive completions, `win_rate` against the reference's completions (ties count half) and
    `kl_to_reference` (nats per completion)."""
    from aigc.metrics.sentiment import judge_report
    from aigc.metrics.text import distinct_n, top_opening

    mine = sample_completions(policy, tokenizer, prompt_ids, 1, max_new_tokens, seed)
    texts = [s.text for s in mine]
    rewards = judge(prompts, texts)
    word, share = top_opening(texts)
    out = {**judge_report(rewards), "distinct_2": distinct_n(texts, 2), "top_opening": word,
           "top_opening_share": share, "num_prompts": len(prompts), "max_new_tokens": max_new_tokens}
    if reference is not None:
        theirs = sample_completions(reference, tokenizer, prompt_ids, 1, max_new_tokens, seed + 1)
        ref_rewards = judge(prompts, [s.text for s in theirs])
        out["win_rate"] = win_rate(rewards, ref_rewards)
        out["reference_reward"] = round(sum(ref_rewards) / len(prompts), 4)
        out["kl_to_reference"] = sampled_kl(policy, reference, mine, block_size)
    return out


def save_reference(model, path: Path) -> None:
    from safetensors.torch import save_file

    from aigc.io.checkpoint import flat_state

    save_file(flat_state({"gpt": model}), str(path))


def load_reference(model, path: Path) -> None:
    from safetensors.torch import load_file

    from aigc.io.checkpoint import load_flat_state

    load_flat_state({"gpt": model}, load_file(str(path)), str(path))
