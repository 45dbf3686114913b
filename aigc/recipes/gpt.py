"""GPT recipe: next-token pre-training on text/code, fine-tuning (--init-from), SFT, preference tuning (DPO, a
reward model: aigc/recipes/preference.py), and sampling (best-of-N with a judge).

The sampler is kept apart from the model (nanoGPT's engine split): aigc/recipes/textgen.py, a
continuous-batching engine with a KV cache, temperature, top-k, top-p, stop strings and streaming, which
`aigc sample` and `aigc serve` share."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc.config import RunConfig
from aigc.errors import AigcError
from aigc.generation import Request, Text
from aigc.io import checkpoint as ckpt
from aigc.models.gpt import GPT, GPTConfig
from aigc.recipes import preference as pref
from aigc.recipes.base import TextRecipe
from aigc.recipes.textgen import SLOTS, TextEngine, TextStream, row_seed

ARCH_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")
CHAT_DATA = ("sft", "preferences")          # runs tuned on these answer a prompt put into the chat template
REFERENCE = "reference.safetensors"          # a DPO run's frozen reference model (the weights it started from)


@dataclass
class GPTSettings(GPTConfig):
    """The network (GPTConfig) and the training objective."""
    objective: str = "lm"          # lm: next token | dpo: DPO on preference pairs | reward: a reward model
    beta: float = 0.1              # dpo: strength of the pull towards the reference
    dpo_loss: str = "sigmoid"      # dpo: sigmoid (DPO) | ipo (IPO: the margin regressed to 1 / (2 beta))
    sft_weight: float = 0.0        # dpo: weight of an added NLL term on the chosen responses
    ptx_weight: float = 0.0        # dpo: weight of an added next-token loss on data.lm_text (InstructGPT's ptx)
    online_judge: str = ""         # dpo: "" = the file's pairs | lexicon | a reward-model run: online DPO, pairs
                                   # from the policy's own completions of the file's prompts, judged every step
    online_samples: int = 4        # online: completions per prompt (the judge's best and worst make the pair)
    online_tokens: int = 32        # online: new tokens per completion


class GPTRecipe(TextRecipe):
    family = "gpt"
    ModelConfig = GPTSettings
    sample_prompt = ""                           # preference runs: a held-out prompt for the training samples

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.model = GPT(cfg.model)
        self.modules = {"gpt": self.model}
        self.device = torch.device("cpu")
        self.objective = cfg.model.objective
        self.reference = self.head = self._judge = None
        self._reference_from = None
        if self.objective == "dpo":                  # frozen, outside `modules`: never trained, never in checkpoints
            self.reference = GPT(cfg.model).eval().requires_grad_(False)
        elif self.objective == "reward":
            self.head = torch.nn.Linear(cfg.model.n_embd, 1)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)
            self.modules["reward_head"] = self.head

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        if m.objective not in pref.OBJECTIVES:
            raise AigcError(f"model.objective must be one of {', '.join(pref.OBJECTIVES)}, got '{m.objective}'")
        if m.objective == "lm" and cfg.data.name not in ("text", "code", "sft"):
            hint = " (preference pairs train --set objective=dpo or objective=reward)" \
                if cfg.data.name == "preferences" else ""
            raise AigcError(f"the gpt family trains on text, code or sft data, not '{cfg.data.name}'{hint}")
        if m.objective != "lm" and cfg.data.name != "preferences":
            raise AigcError(f"objective={m.objective} trains on preference pairs: --data preferences, not "
                            f"'{cfg.data.name}'")
        if m.dpo_loss not in pref.DPO_LOSSES:
            raise AigcError(f"model.dpo_loss must be one of {', '.join(pref.DPO_LOSSES)}, got '{m.dpo_loss}'")
        if not m.beta > 0 or m.sft_weight < 0 or m.ptx_weight < 0:
            raise AigcError("model.beta must be > 0, model.sft_weight and model.ptx_weight >= 0")
        if m.online_judge and (m.objective != "dpo" or m.online_samples < 2 or m.online_tokens < 1):
            raise AigcError("model.online_judge is for objective=dpo, with model.online_samples >= 2 and "
                            "model.online_tokens >= 1")
        if min(m.block_size, m.n_layer, m.n_head, m.n_embd) < 1 or m.n_embd % m.n_head:
            raise AigcError("model.block_size, n_layer, n_head, n_embd must be positive and n_embd divisible by "
                            "n_head")
        if not 0 <= m.dropout < 1:
            raise AigcError("model.dropout must be in [0, 1)")

    @staticmethod
    def window(cfg) -> int:
        """Input tokens per example: the context for next-token losses (batches hold one more, the last target);
        a reward model reads the whole sequence, so its batches must fit the context."""
        return cfg.model.block_size - (cfg.model.objective == "reward")

    # ---------------------------------------------------------------- fine-tuning from a trained run
    @staticmethod
    def adopt_init_config(cfg: RunConfig, init_dir: Path, sets: list[str]) -> None:
        """Take the architecture and tokenizer of the run we start from; refuse changes to them."""
        from aigc.config import apply_sets, read_toml

        d = read_toml(init_dir / "config.toml")
        if d.get("family") != "gpt":
            raise AigcError(f"--init-from {init_dir} is a '{d.get('family')}' run, not a gpt run")
        init_model, init_data = d.get("model", {}), d.get("data", {})
        asked_tokenizer = any(s.split("=")[0].strip() in ("tokenizer", "data.tokenizer") for s in sets)
        if init_data.get("tokenizer") != cfg.data.tokenizer and asked_tokenizer:
            raise AigcError(f"--init-from {init_dir} uses the '{init_data.get('tokenizer')}' tokenizer; "
                            f"fine-tuning keeps it (asked for '{cfg.data.tokenizer}')")
        cfg.data.tokenizer = init_data.get("tokenizer", cfg.data.tokenizer)
        asked_template = any(s.split("=")[0].strip() in ("template", "data.template") for s in sets)
        if init_data.get("name") in CHAT_DATA and not asked_template:      # tuning a chat run keeps its template
            cfg.data.template = init_data.get("template", cfg.data.template)
        if cfg.model.objective == "dpo" and cfg.model.ptx_weight > 0 and not cfg.data.lm_text:
            if init_data.get("name") != "text" or not init_data.get("dir"):
                raise AigcError(f"model.ptx_weight mixes in next-token loss on text: set data.lm_text (the run "
                                f"{init_dir} was not trained on a text corpus aigc can reread)")
            cfg.data.lm_text = str(Path(init_data["dir"]).resolve())     # the corpus the init run was trained on
        asked = {k: getattr(cfg.model, k) for k in ARCH_KEYS}
        for k in ARCH_KEYS:
            setattr(cfg.model, k, init_model.get(k, getattr(cfg.model, k)))
        apply_sets(cfg, [s for s in sets if s.split("=")[0].strip().split(".")[-1] == "dropout"])
        changed = [k for k in ARCH_KEYS if k != "vocab_size" and any(
            s.split("=")[0].strip().split(".")[-1] == k for s in sets) and asked[k] != getattr(cfg.model, k)]
        if changed:
            raise AigcError(f"--init-from keeps the architecture of {init_dir}; cannot change {', '.join(changed)}")

    def init_from(self, init_dir: Path) -> None:
        used_ema = ckpt.load_modules({"gpt": self.model}, Path(init_dir) / "checkpoint", ema=True)
        print(f"initialised from {init_dir} ({'EMA' if used_ema else 'live'} weights)", file=sys.stderr)
        if self.reference is not None:
            self.reference.load_state_dict(self.model.state_dict())
            self._reference_from = init_dir

    def save_artifacts(self, run_dir: Path, data) -> None:
        """The tokenizer and, for DPO, the reference model: written when the run starts, read back on resume."""
        super().save_artifacts(run_dir, data)
        if self.cfg.data.name == "preferences":
            self.sample_prompt = data.eval_prompts()[0]
        if self.reference is not None:
            if self._reference_from is not None:
                pref.save_reference(self.reference, Path(run_dir) / REFERENCE)
            else:
                self.load_artifacts(run_dir)

    def load_artifacts(self, run_dir: Path) -> None:
        super().load_artifacts(run_dir)
        if self.reference is not None and (Path(run_dir) / REFERENCE).is_file():
            pref.load_reference(self.reference, Path(run_dir) / REFERENCE)
            self._reference_from = run_dir

    @staticmethod
    def make_batcher(data, cfg):
        if cfg.data.name == "preferences":
            from aigc.data.preferences import PairBatcher

            return PairBatcher(data, cfg.data.batch_size, cfg.train.seed, online=bool(cfg.model.online_judge))
        return TextRecipe.make_batcher(data, cfg)

    # ---------------------------------------------------------------- trainer hooks
    def param_groups(self):
        return {"model": [p for m in self.modules.values() for p in m.parameters()]}

    def ema_modules(self):
        return self.modules

    def train_step(self, batch, opt):
        if self.objective == "lm":
            out = self.model.loss(batch["tokens"], batch.get("loss_mask"))
            opt.update("model", out["loss"])
            return {"loss": out["loss"].detach()}
        loss, logs = self.online_loss(batch) if "prompt_ids" in batch else self.pair_loss(batch)
        opt.update("model", loss)
        return {"loss": loss.detach(), **logs}

    def pair_loss(self, batch) -> tuple[torch.Tensor, dict]:
        """DPO or Bradley-Terry loss of a batch of pairs (chosen rows first, then rejected: data/preferences.py),
        with DPO's added terms (sft_weight on the chosen responses, ptx_weight on the batch's `lm_tokens`)."""
        B = len(batch["tokens"])                       # (B, 2, ...) -> (2B, ...): the chosen rows, then the rejected
        tokens, mask = (batch[k].transpose(0, 1).reshape(2 * B, -1) for k in ("tokens", "loss_mask"))
        if self.objective == "reward":
            r = self.reward(tokens, pref.last_positions(mask))
            return pref.bradley_terry_loss(r[:B], r[B:])
        reference = self.ready_reference()
        logps = pref.response_logps(self.model, tokens, mask)
        with torch.no_grad():
            ref = pref.response_logps(reference, tokens, mask)
        loss, logs = pref.dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], self.cfg.model.beta,
                                   self.cfg.model.dpo_loss)
        if self.cfg.model.sft_weight > 0:
            nll = -logps[:B].sum() / mask[:B].sum().clamp(min=1)
            loss = loss + self.cfg.model.sft_weight * nll
            logs["sft_nll"] = nll.detach()
        return self.ptx_term(batch, loss, logs)

    def ptx_term(self, batch, loss, logs) -> tuple[torch.Tensor, dict]:
        if self.cfg.model.ptx_weight > 0 and "lm_tokens" in batch:
            ptx = self.model.loss(batch["lm_tokens"])["loss"]
            loss = loss + self.cfg.model.ptx_weight * ptx
            logs["ptx_loss"] = ptx.detach()
        return loss, logs

    def online_loss(self, batch) -> tuple[torch.Tensor, dict]:
        """Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"): the batch's
        prompts, `online_samples` completions each from the policy as it is now (temperature 1, the seeds the
        batcher drew), the judge's best and worst as the pair, then the DPO loss against the frozen reference.
        Prompts whose completions all tie give no pair; a batch without pairs trains only the ptx term."""
        from aigc.data.preferences import pair_batch

        m = self.cfg.model
        if self._judge is None:
            self._judge = pref.load_judge(m.online_judge, self.model.wte.weight.device)
        pairs, logs = pref.online_pairs(self.model, self.tokenizer, self._judge, batch["prompt_ids"],
                                        batch["prompts"], batch["seeds"].tolist(), m.online_samples, m.online_tokens)
        loss = self.model.wte.weight.sum() * 0               # no pairs: only the ptx term trains
        if pairs:
            dev = self.model.wte.weight.device
            loss, more = self.pair_loss({k: v.to(dev) for k, v in pair_batch(pairs, m.block_size).items()})
            logs.update(more)
        return self.ptx_term(batch, loss, logs)

    def ready_reference(self) -> GPT:
        """The DPO reference, on the policy's device (the trainer and open_run move only `modules`), checked frozen."""
        if self._reference_from is None:
            raise AigcError("this DPO run has no reference model (reference.safetensors, written when it started "
                            "from --init-from RUN)")
        if self.reference.wte.weight.device != self.model.wte.weight.device:
            self.reference.to(self.model.wte.weight.device)
        if self.reference.training or any(p.requires_grad for p in self.reference.parameters()):
            raise AssertionError("the DPO reference model must stay frozen")
        return self.reference

    def reward(self, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Reward model: the scalar head on the final hidden state of token `last` of each row -> (B,)."""
        h = self.model.features(tokens)
        return self.head(h[torch.arange(len(tokens), device=tokens.device), last]).squeeze(-1)

    def evaluate(self, data, max_batches=None) -> dict[str, float]:
        """Validation loss in nats per token: every val token when max_batches is None, else an estimate.
        Preference runs: the loss and pair accuracy on held-out pairs (DPO: of the implicit reward)."""
        if self.objective != "lm":
            return self.evaluate_pairs(data, max_batches)
        return self.evaluate_lm(data, max_batches)

    def evaluate_lm(self, data, max_batches=None, model=None) -> dict[str, float]:
        """Next-token loss of `model` (default: this run's) on text, code or sft data (also of a preference-tuned
        model and its reference: what tuning cost)."""
        total, count = 0.0, 0.0
        dev, model = self.device_of(), model or self.model
        for batch in data.eval_windows(self.cfg.data.batch_size if max_batches else 64, max_batches):
            mask = batch.get("loss_mask")
            out = model.loss(batch["tokens"].to(dev), None if mask is None else mask.to(dev))
            total += out["sum"].item()
            count += out["count"].item()
        loss = total / max(count, 1)
        out = {"val_loss": round(loss, 4), "val_ppl": round(math.exp(min(loss, 50)), 3)}
        if max_batches is None:
            out["num_val_tokens"] = int(count)
            chars = self._val_chars(data)
            if chars:
                out["val_bpc"] = round(total / math.log(2) / chars, 4)
        return out

    def evaluate_pairs(self, data, max_batches=None) -> dict[str, float]:
        dev, sums, n = self.device_of(), {}, 0
        for batch in data.eval_batches(self.cfg.data.batch_size, max_batches):
            loss, logs = self.pair_loss({k: v.to(dev) for k, v in batch.items()})
            k = len(batch["tokens"])
            for name, v in {"loss": loss, **logs}.items():
                sums[name] = sums.get(name, 0.0) + float(v) * k
            n += k
        out = {f"val_{k.replace('/', '_')}": round(v / max(n, 1), 4) for k, v in sums.items()}
        acc = "val_rewards_accuracies" if self.objective == "dpo" else "val_accuracy"
        out["val_pair_accuracy"] = out.pop(acc)
        out[f"val_{self.objective}_loss"] = out.pop("val_loss")     # not the language-model val_loss
        if self.objective == "dpo":                  # on the first 64 held-out prompts, 32 new tokens each
            out["kl_to_reference"] = self.kl_to_reference(data.eval_prompts()[:64])
        return out

    @torch.no_grad()
    def kl_to_reference(self, prompts: list[str], max_new_tokens: int = 32) -> float:
        """KL(policy || reference) in nats per completion of `prompts` (aigc/recipes/preference.py)."""
        from aigc.data.text import apply_template

        ids = [self.encode_prompt(apply_template(self.cfg.data.template, p)) for p in prompts]
        streams = pref.sample_completions(self.model, self.tokenizer, ids, 1, max_new_tokens, seed=0)
        return pref.sampled_kl(self.model, self.ready_reference(), streams, self.cfg.model.block_size)

    def _val_chars(self, data) -> int:
        """Characters of the predicted val text (for bits per character); 0 for SFT."""
        if data.sft is not None:
            return 0
        if getattr(data, "_val_chars", None) is None:
            data._val_chars = len(data.tokenizer.decode(data.val[1:].tolist()))
        return data._val_chars

    def save_samples(self, path: Path) -> None:
        if self.objective == "reward":
            return
        prompt = ""
        if self.cfg.data.name == "preferences":        # a held-out prompt shows what tuning changed
            prompt = self.sample_prompt
        text = self.generate_text(Request(max_new_tokens=200, prompt=prompt or None))[0]
        Path(path).with_suffix(".txt").write_text(prompt + text, encoding="utf-8")

    def full_eval(self, data, num=None, k=None, progress=None) -> dict:
        if self.objective != "lm":
            return self.full_eval_pairs(data, num)
        r = self.evaluate(data)
        return {**r, "tokenizer": self.cfg.data.tokenizer, "vocab_size": self.cfg.model.vocab_size,
                "reference_split": "last 10% of the corpus (whole split)" if data.sft is None else "last 10% of "
                                                                                                   "the examples",
                "units": "val_loss: nats per token; val_bpc: bits per character"}

    def full_eval_pairs(self, data, num=None) -> dict:
        """Held-out pairs (loss, pair accuracy; DPO: trl's reward metrics). DPO also: kl_to_reference on `num`
        held-out prompts (default all); with data.lm_text, the whole-val loss of that text and its change from the
        reference; with data.judge, the judge on those prompts: reward, positive_rate, distinct_2, top_opening(_share),
        win_rate."""
        out = {**self.evaluate_pairs(data), "num_pairs": len(data.val), "objective": self.objective,
               "reference_split": "data.eval_file" if self.cfg.data.eval_file else "last 10% of the pairs"}
        if self.objective != "dpo":
            return out
        out["beta"] = self.cfg.model.beta
        reference = self.ready_reference()
        if data.lm is not None:                             # what tuning cost the language model, on its corpus
            mine = self.evaluate_lm(data.lm)["val_loss"]
            ref = self.evaluate_lm(data.lm, model=reference)["val_loss"]
            out.update(text_val_loss=mine, text_val_loss_change=round(mine - ref, 4))
        prompts = data.eval_prompts()[:num] if num else data.eval_prompts()
        if not data.judge:
            out["kl_to_reference"] = self.kl_to_reference(prompts)
        else:
            from aigc.data.text import apply_template
            from aigc.metrics.sentiment import LexiconJudge

            ids = [self.encode_prompt(apply_template(self.cfg.data.template, p)) for p in prompts]
            out.update(judge=data.judge, temperature=1.0, **pref.judge_policy(
                self.model, reference, self.tokenizer, self.cfg.model.block_size, prompts, ids, LexiconJudge()))
        return out

    # ---------------------------------------------------------------- sampling
    def accepts(self) -> set[str]:
        if self.objective == "reward":
            return set()
        out = {"prompt", "temperature", "top_k", "top_p", "max_new_tokens", "stop", "best_of", "judge"}
        return out | ({"messages"} if self.cfg.data.name in CHAT_DATA else set())

    def describe_model(self) -> str:
        what = {"reward": "reward model", "dpo": "DPO-tuned GPT"}.get(self.objective, "GPT")
        return f"{what} ({'chat' if self.cfg.data.name in CHAT_DATA else self.cfg.data.name})"

    def generate(self, request, stream=None, progress=None) -> Text:
        """Defaults: temperature 0.8, 500 new tokens, no top-k / top-p; stops at end-of-text or a stop string.
        best_of = N: N samples for each one asked for, the judge keeps the best."""
        if self.objective == "reward":
            raise AigcError("a reward model scores text, it does not write any: use it as a judge, e.g. "
                            "aigc sample POLICY_RUN --best-of 16 --judge THIS_RUN")
        texts = self.generate_text(request, stream, progress)
        return Text(texts, [request.prompt or ""] * len(texts))

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt).tolist() if prompt else []
        if not ids:                                        # an empty prompt starts from a newline / end-of-text
            eot = self.tokenizer.eot_id
            if eot is not None:
                ids = [eot]
            else:
                stoi = getattr(self.tokenizer, "stoi", {})
                ids = [stoi.get("\n", 0)]
        limit = self.cfg.model.block_size
        if len(ids) > limit:
            print(f"note: the prompt has {len(ids)} tokens; only its last {limit} fit the context", file=sys.stderr)
            ids = ids[-limit:]
        return ids

    def text_streams(self, request) -> list:
        """The request as one TextStream per sample (defaults: temperature 0.8, 500 new tokens), for
        `text_engine()`; sample i draws from row_seed(seed, i)."""
        r = request
        temperature = 0.8 if r.temperature is None else r.temperature
        ids = self.encode_prompt(self.prompt_text(r))
        n = (r.num or 1) * (r.best_of or 1)                 # best-of-N: candidate j of sample i is row i + num * j
        return [TextStream(list(ids), r.max_new_tokens or 500, temperature, r.top_k, r.top_p, row_seed(r.seed, i),
                           tuple(r.stop)) for i in range(n)]

    def prompt_text(self, request) -> str:
        """What the model is given: a chat's messages or the prompt put into the chat template (runs tuned on sft
        or preferences data), else the prompt as it is."""
        if request.messages:
            return self.chat_prompt(list(request.messages))
        if self.cfg.data.name in CHAT_DATA and request.prompt:
            from aigc.data.text import apply_template

            return apply_template(self.cfg.data.template, request.prompt)
        return request.prompt or ""

    def chat_prompt(self, messages: list[tuple[str, str]]) -> str:
        """A chat as the text the model was tuned on: each user message put into the chat template, the other
        messages as they are, in order; it must end with the user's message (the reply is the continuation)."""
        from aigc.data.text import apply_template

        if self.cfg.data.name not in CHAT_DATA or self.objective == "reward":
            return super().chat_prompt(messages)
        if not messages or messages[-1][0] != "user":
            raise AigcError("a chat must end with a message of role 'user'")
        return "".join(apply_template(self.cfg.data.template, c) if role == "user" else c for role, c in messages)

    def text_engine(self, slots: int = SLOTS, threads=None) -> TextEngine:
        """A continuous-batching decoder over this model (aigc/recipes/textgen.py)."""
        return TextEngine(self.model, self.tokenizer, slots, threads)

    def generate_text(self, request, stream=None, progress=None) -> list[str]:
        """The request's samples (prompt not included), decoded together; `stream(piece)` gets the first
        sample's text as it is made (num = 1 only); `progress(done, total)` after every token."""
        if stream is not None and ((request.num or 1) != 1 or (request.best_of or 1) > 1):
            raise AigcError("--stream prints one sample as it is made; use --num 1 without --best-of")
        judge = pref.load_judge(request.judge, self.device_of()) if (request.best_of or 1) > 1 else None
        streams = self.text_streams(request)
        engine = self.text_engine(slots=min(len(streams), SLOTS))
        total = sum(x.max_new_tokens for x in streams)

        def on_step(changed):
            if stream is not None and streams[0] in changed:
                piece = streams[0].take()
                if piece:
                    stream(piece)
            if progress is not None:
                progress(sum(len(x.tokens) for x in streams), total)
        was_training = self.model.training
        try:
            engine.run(streams, on_step)
        finally:
            self.model.train(was_training)
        texts = [x.text for x in streams]
        if judge is None:
            return texts
        num = request.num or 1
        prompt = request.prompt if request.prompt is not None else (request.messages[-1][1] if request.messages
                                                                   else "")
        scores = judge([prompt] * len(texts), texts)
        best = []
        for i in range(num):                                 # ties keep the earliest candidate
            rows = [i + num * j for j in range(request.best_of)]
            best.append(texts[max(rows, key=lambda k: scores[k])])
        return best


