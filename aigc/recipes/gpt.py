"""GPT recipe: next-token pre-training on text/code, fine-tuning (--init-from), SFT, and sampling.

The sampler is kept apart from the model (nanoGPT's engine split): aigc/recipes/textgen.py, a
continuous-batching engine with a KV cache, temperature, top-k, top-p, stop strings and streaming, which
`aigc sample` and `aigc serve` share."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from aigc.config import RunConfig
from aigc.errors import AigcError
from aigc.generation import Request, Text
from aigc.io import checkpoint as ckpt
from aigc.models.gpt import GPT, GPTConfig
from aigc.recipes.base import TextRecipe
from aigc.recipes.textgen import SLOTS, TextEngine, TextStream, row_seed

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
        text = self.generate_text(Request(max_new_tokens=200))[0]
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

    def generate(self, request, stream=None, progress=None) -> Text:
        """Defaults: temperature 0.8, 500 new tokens, no top-k / top-p; stops at end-of-text or a stop string."""
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
        ids = self.encode_prompt(r.prompt or "")
        return [TextStream(list(ids), r.max_new_tokens or 500, temperature, r.top_k, r.top_p, row_seed(r.seed, i),
                           tuple(r.stop)) for i in range(r.num or 1)]

    def chat_prompt(self, messages: list[tuple[str, str]]) -> str:
        """A model fine-tuned on sft data learned prompt -> response (then end-of-text); a chat becomes its
        messages' contents in order, the last one the user's, and the reply is the continuation."""
        if self.cfg.data.name != "sft":
            return super().chat_prompt(messages)
        if not messages or messages[-1][0] != "user":
            raise AigcError("a chat must end with a message of role 'user'")
        return "".join(content for _, content in messages)

    def text_engine(self, slots: int = SLOTS, threads=None) -> TextEngine:
        """A continuous-batching decoder over this model (aigc/recipes/textgen.py)."""
        return TextEngine(self.model, self.tokenizer, slots, threads)

    def generate_text(self, request, stream=None, progress=None) -> list[str]:
        """The request's samples (prompt not included), decoded together; `stream(piece)` gets the first
        sample's text as it is made (num = 1 only); `progress(done, total)` after every token."""
        if stream is not None and (request.num or 1) != 1:
            raise AigcError("--stream prints one sample; use --num 1")
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
        return [x.text for x in streams]


