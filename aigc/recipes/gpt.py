"""GPT recipe: next-token pre-training on text/code, fine-tuning (--init-from), SFT, and sampling.

The sampler is kept apart from the model (nanoGPT's engine split): a KV cache, temperature, top-k,
top-p (nucleus), several samples in one batch, stop strings and streaming. With learned absolute
positions the cache cannot slide, so when it fills up the last block_size/2 tokens are re-encoded
and decoding goes on (the prefix beyond that window is forgotten, as in any fixed-context model)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from aigc.config import RunConfig
from aigc.errors import AigcError
from aigc.generation import Text
from aigc.io import checkpoint as ckpt
from aigc.models.gpt import GPT, Decoder, GPTConfig, KVCache
from aigc.recipes.base import TextRecipe

ARCH_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")


class GPTRecipe(TextRecipe):
    family = "gpt"
    ModelConfig = GPTConfig

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.model = GPT(cfg.model)
        self.modules = {"gpt": self.model}
        self.device = torch.device("cpu")

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        if cfg.data.name not in ("text", "code", "sft"):
            raise AigcError(f"the gpt family trains on text, code or sft data, not '{cfg.data.name}'")
        if min(m.block_size, m.n_layer, m.n_head, m.n_embd) < 1 or m.n_embd % m.n_head:
            raise AigcError("model.block_size, n_layer, n_head, n_embd must be positive and n_embd divisible by "
                            "n_head")
        if not 0 <= m.dropout < 1:
            raise AigcError("model.dropout must be in [0, 1)")

    @staticmethod
    def window(cfg) -> int:
        return cfg.model.block_size

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
        asked = {k: getattr(cfg.model, k) for k in ARCH_KEYS}
        for k in ARCH_KEYS:
            setattr(cfg.model, k, init_model.get(k, getattr(cfg.model, k)))
        apply_sets(cfg, [s for s in sets if s.split("=")[0].strip().split(".")[-1] == "dropout"])
        changed = [k for k in ARCH_KEYS if k != "vocab_size" and any(
            s.split("=")[0].strip().split(".")[-1] == k for s in sets) and asked[k] != getattr(cfg.model, k)]
        if changed:
            raise AigcError(f"--init-from keeps the architecture of {init_dir}; cannot change {', '.join(changed)}")

    def init_from(self, init_dir: Path) -> None:
        used_ema = ckpt.load_modules(self.modules, Path(init_dir) / "checkpoint", ema=True)
        print(f"initialised from {init_dir} ({'EMA' if used_ema else 'live'} weights)", file=sys.stderr)

    # ---------------------------------------------------------------- trainer hooks
    def param_groups(self):
        return {"model": list(self.model.parameters())}

    def ema_modules(self):
        return self.modules

    def train_step(self, batch, opt):
        out = self.model.loss(batch["tokens"], batch.get("loss_mask"))
        opt.update("model", out["loss"])
        return {"loss": out["loss"].detach()}

    def evaluate(self, data, max_batches=None) -> dict[str, float]:
        """Validation loss in nats per token: every val token when max_batches is None, else an estimate."""
        total, count = 0.0, 0.0
        dev = self.device_of()
        for batch in data.eval_windows(self.cfg.data.batch_size if max_batches else 64, max_batches):
            mask = batch.get("loss_mask")
            out = self.model.loss(batch["tokens"].to(dev), None if mask is None else mask.to(dev))
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

    def _val_chars(self, data) -> int:
        """Characters of the predicted val text (for bits per character); 0 for SFT."""
        if data.sft is not None:
            return 0
        if getattr(data, "_val_chars", None) is None:
            data._val_chars = len(data.tokenizer.decode(data.val[1:].tolist()))
        return data._val_chars

    def save_samples(self, path: Path) -> None:
        text = self.generate_text("", num=1, max_new_tokens=200, seed=0)[0]
        Path(path).with_suffix(".txt").write_text(text, encoding="utf-8")

    def full_eval(self, data, num=None, k=None, progress=None) -> dict:
        r = self.evaluate(data)
        return {**r, "tokenizer": self.cfg.data.tokenizer, "vocab_size": self.cfg.model.vocab_size,
                "reference_split": "last 10% of the corpus (whole split)" if data.sft is None else "last 10% of "
                                                                                                   "the examples",
                "units": "val_loss: nats per token; val_bpc: bits per character"}

    # ---------------------------------------------------------------- sampling
    def accepts(self) -> set[str]:
        return {"prompt", "temperature", "top_k", "top_p", "max_new_tokens", "stop"}

    def generate(self, request, stream=None) -> Text:
        """Defaults: temperature 0.8, 500 new tokens, no top-k / top-p."""
        r = request
        texts = self.generate_text(r.prompt or "", num=r.num or 1, max_new_tokens=r.max_new_tokens or 500,
                                   temperature=0.8 if r.temperature is None else r.temperature, top_k=r.top_k,
                                   top_p=r.top_p, stop=r.stop, seed=r.seed, stream=stream)
        return Text(texts, [r.prompt or ""] * len(texts))

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

    @torch.inference_mode()
    def generate_text(self, prompt: str, num: int = 1, max_new_tokens: int = 500, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None, stop: tuple = (), seed: int = 0,
                      stream=None) -> list[str]:
        """`num` continuations of `prompt` (prompt not included). `stream(text_piece)` gets the new
        text as it is produced (num = 1 only). Generation stops at max_new_tokens or a stop string
        (which is cut off)."""
        if temperature < 0:
            raise AigcError("--temperature must be >= 0 (0 = greedy)")
        if top_k is not None and top_k < 1:
            raise AigcError("--top-k must be at least 1")
        if top_p is not None and not 0 < top_p <= 1:
            raise AigcError("--top-p must be in (0, 1]")
        if stream is not None and num != 1:
            raise AigcError("--stream prints one sample; use --num 1")
        ids = self.encode_prompt(prompt)
        rows = [list(ids) for _ in range(num)]
        out = sample_tokens(self.model, rows, max_new_tokens, temperature, top_k, top_p, seed,
                            done=self._stop_check(len(ids), stop, stream) if (stop or stream) else None)
        texts = []
        for r in out:
            t = self.tokenizer.decode(r[len(ids):])
            for s in stop:
                if s in t:
                    t = t[:t.index(s)]
            texts.append(t)
        return texts

    def _stop_check(self, start: int, stop, stream):
        """A callback for sample_tokens: streams new text and says which rows have hit a stop string."""
        state = {"printed": 0}

        def done(rows_now) -> list[bool]:
            flags = []
            for i, r in enumerate(rows_now):
                text = self.tokenizer.decode(r[start:])
                hit = any(s in text for s in stop)
                flags.append(hit)
                if stream is not None and i == 0:
                    shown = text[:text.index(next(s for s in stop if s in text))] if hit else text
                    safe = shown.rstrip("\ufffd")              # wait for the rest of a multi-byte character
                    if len(safe) > state["printed"]:
                        stream(safe[state["printed"]:])
                        state["printed"] = len(safe)
            return flags
        return done


def _filter_logits(logits, top_k, top_p):
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already cover top_p (the first is always kept)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_tokens(model: GPT, rows: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int = 0, done=None) -> list[list[int]]:
    """Autoregressive sampling with a KV cache for a batch of equal-length prompts.

    The prompt is encoded in one forward pass; each new token then costs one `Decoder` step (the
    model's one-token forward without module-call overhead). On CPU, decoding a few streams is a
    chain of tiny matmuls (1 x C @ C x 3C) that a second thread cannot speed up; OpenMP's
    synchronisation only adds latency, and on a busy machine it is catastrophic (measured here:
    5 tokens/s with 2 threads while another process used both cores, 580 with 1). So small batches
    decode on one thread; the caller's setting is restored after."""
    dev = next(model.parameters()).device
    small = dev.type == "cpu" and len(rows) * model.cfg.n_embd <= 4096
    threads = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _sample_loop(model, rows, max_new_tokens, temperature, top_k, top_p, seed, done, dev)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)


def _sample_loop(model, rows, max_new_tokens, temperature, top_k, top_p, seed, done, dev):
    block = model.cfg.block_size
    step = Decoder(model)
    g = torch.Generator(device=dev).manual_seed(seed)
    seqs = torch.tensor(rows, dtype=torch.long, device=dev)
    finished = torch.zeros(len(rows), dtype=torch.bool, device=dev)
    cache = KVCache(model.cfg, len(rows), dev, next(model.parameters()).dtype)
    logits = model(seqs[:, -block:], cache)[:, -1]
    out = [seqs]
    for _ in range(max_new_tokens):
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = _filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=g)[:, 0]
        out.append(nxt[:, None])
        if done is not None:
            flags = done(torch.cat(out, 1).tolist())
            finished |= torch.tensor(flags, device=dev)
            if finished.all():
                break
        if cache.pos >= block:                            # cache full: re-encode the last half-window
            keep = torch.cat(out, 1)[:, -(block // 2):]
            cache = KVCache(model.cfg, len(rows), dev, cache.kv[0].dtype)
            logits = model(keep, cache)[:, -1]
        else:
            logits = step(nxt, cache)
    return torch.cat(out, 1).tolist()
