"""Text generation from a GPT: a continuous-batching decode engine that `aigc sample` and `aigc serve` share.

Each request becomes one `TextStream` per sample. Streams join the running batch between steps and leave it when
they finish (Yu et al., "Orca: A Distributed Serving System for Transformer-Based Generative Models", OSDI 2022),
so a server decodes every concurrent request with one step per token; the batch's keys and values live in a
`SlotCache`, one row per stream, each at its own position.

Sampling is defined per stream, so that a stream's output does not depend on what else is in the batch: a stream
with seed s draws all its uniforms up front from its own generator, and step t picks the token whose cumulative
probability first exceeds uniform t (inverse-CDF sampling) after temperature, top-k and top-p (Holtzman et al.,
"The Curious Case of Neural Text Degeneration", ICLR 2020). Temperature 0 is greedy. Same request and seed, same
text, whether it ran alone or beside others (up to float rounding, which depends on the batch's size).

With learned absolute positions the cache cannot slide: when a stream fills the context, its last block_size/2
tokens are re-encoded and decoding goes on (the prefix beyond that window is forgotten)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from aigc.errors import AigcError
from aigc.models.gpt import GPT, Decoder, KVCache, SlotCache

SLOTS = 16               # streams decoded together by default


def row_seed(seed: int, row: int) -> int:
    """The generator seed of sample `row` of a request with `seed` (rows of one request differ)."""
    return (seed * 1_000_003 + row) % (2 ** 63)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:
        raise AigcError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise AigcError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise AigcError(f"top_p must be in (0, 1], got {top_p}")


@dataclass
class TextStream:
    """One sample being generated. `take()` returns the text made since the last call (never half a character or
    the start of a stop string); `finish` becomes "length", "stop" or "cancelled"."""
    prompt: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stop: tuple[str, ...] = ()
    tokens: list[int] = field(default_factory=list)        # the new tokens
    text: str = ""                                         # their text, up to a stop string
    finish: str | None = None
    cancelled: bool = False                                # set from any thread; honoured at the next step
    _decoded: int = 0                                      # tokens already turned into `text`
    _taken: int = 0                                        # characters already given out by take()

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p)
        g = torch.Generator().manual_seed(self.seed)
        self.uniforms = torch.rand(self.max_new_tokens, generator=g).tolist()

    def take(self) -> str:
        hold = 0 if self.finish else max((len(s) - 1 for s in self.stop), default=0)
        end = max(self._taken, len(self.text) - hold)
        piece, self._taken = self.text[self._taken:end], end
        return piece


def sample_rows(logits: torch.Tensor, streams: list[TextStream]) -> torch.Tensor:
    """One token per row of `logits` (n, V), each with its own stream's temperature, top-k, top-p and next
    uniform; the same arithmetic whatever the other rows are."""
    n, V = logits.shape
    dev = logits.device
    temps = torch.tensor([s.temperature for s in streams], device=dev)
    u = torch.tensor([s.uniforms[len(s.tokens)] for s in streams], device=dev)
    z = logits.float() / temps.clamp(min=1e-6)[:, None]
    tok = _inverse_cdf(z, u)                              # rows without top-k / top-p: over the vocabulary's order
    filtered = [s.top_k is not None or s.top_p is not None for s in streams]
    if any(filtered):                                     # rows with them: over the tokens sorted by probability
        zs, order = torch.sort(z, dim=-1, descending=True)
        top_k = torch.tensor([min(s.top_k or V, V) for s in streams], device=dev)
        zs = zs.masked_fill(torch.arange(V, device=dev)[None] >= top_k[:, None], float("-inf"))
        top_p = torch.tensor([s.top_p or 1.0 for s in streams], device=dev)
        probs = zs.softmax(-1)
        drop = (probs.cumsum(-1) - probs > top_p[:, None]) & (top_p < 1.0)[:, None]   # the first is always kept
        picked = order.gather(1, _inverse_cdf(zs.masked_fill(drop, float("-inf")), u)[:, None])[:, 0]
        tok = torch.where(torch.tensor(filtered, device=dev), picked, tok)
    if any(s.temperature == 0 for s in streams):
        tok = torch.where(temps == 0, logits.argmax(-1), tok)
    return tok


def _inverse_cdf(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the first index whose cumulative softmax(z) exceeds u (of the total, so rounding cannot run off
    the end; tokens of probability 0 are never picked)."""
    cdf = z.softmax(-1).cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=z.size(-1) - 1)[:, 0]


class TextEngine:
    """Decodes any number of TextStreams, up to `slots` at a time, one token per active stream per `step()`.
    Not thread-safe: one thread drives it (a server's worker); others only set `stream.cancelled`."""

    def __init__(self, model: GPT, tokenizer, slots: int = SLOTS, threads=None):
        self.model, self.tokenizer, self.threads = model.eval(), tokenizer, threads
        p = next(model.parameters())
        self.device, self.block = p.device, model.cfg.block_size
        self.cache = SlotCache(model.cfg, slots, p.device, p.dtype)
        self.logits = torch.zeros(slots, model.cfg.vocab_size, device=p.device, dtype=p.dtype)
        self.decoder = Decoder(model)
        self.active: list[TextStream] = []
        self.eot = tokenizer.eot_id

    @property
    def free(self) -> int:
        return self.cache.slots - len(self.active)

    @torch.inference_mode()
    def add(self, *streams: TextStream) -> None:
        """Encode the streams' prompts (their last block_size tokens) into free slots; prompts of one length in
        one forward pass (a request's n samples, or a benchmark's streams, start together)."""
        if len(streams) > self.free:
            raise RuntimeError("no free slot")
        by_length: dict[int, list[int]] = {}
        for i, s in enumerate(streams):
            by_length.setdefault(len(s.prompt[-self.block:]), []).append(i)
        first = len(self.active)
        for rows in by_length.values():
            self._encode_rows([first + i for i in rows], [streams[i].prompt[-self.block:] for i in rows])
        self.active += streams
        self.cache.n = len(self.active)

    def _encode_rows(self, rows: list[int], ids: list[list[int]]) -> None:
        """Encode equal-length token lists into `rows` in one forward pass."""
        batch = KVCache(self.model.cfg, len(rows), self.device, self.logits.dtype)
        logits = self.model(torch.tensor(ids, device=self.device), batch)[:, -1]
        for i, row in enumerate(rows):
            self.logits[row] = logits[i]
            self.cache.put(row, batch, i)

    @torch.inference_mode()
    def step(self) -> list[TextStream]:
        """One new token for every active stream; returns the streams that changed (new text or finished).
        Finished and cancelled streams leave the batch."""
        if self.threads is not None:
            self.threads.update()
        live = [s for s in self.active if not s.cancelled]
        changed = [s for s in self.active if s.cancelled]
        for s in changed:
            s.finish = "cancelled"
        if len(live) < len(self.active):
            self._compact(live)
        if not live:
            return changed
        n = len(live)
        toks = sample_rows(self.logits[:n], live)
        new = toks.tolist()
        for s, t in zip(live, new):
            self._append(s, t)
        changed += live
        keep = [s for s in live if s.finish is None]
        if len(keep) < n:
            toks = toks[[i for i, s in enumerate(live) if s.finish is None]]
            self._compact(keep)
        if keep:
            full = (self.cache.pos[:len(keep)] >= self.block).tolist()
            if any(full):                   # a stream filled the context: its last half is re-encoded below
                order = [i for i in range(len(keep)) if not full[i]] + [i for i in range(len(keep)) if full[i]]
                toks = toks[order]
                keep = [keep[i] for i in order]
                self._compact(keep)
            m = len(keep) - sum(full)
            if m:
                self.logits[:m] = self.decoder.step_rows(toks[:m], self.cache)
            if m < len(keep):                 # all of the same length: one forward pass
                self._encode_rows(list(range(m, len(keep))),
                                  [(s.prompt + s.tokens)[-(self.block // 2):] for s in keep[m:]])
        return changed

    def _compact(self, keep: list[TextStream]) -> None:
        """Rows of the streams in `keep` moved to 0..len(keep)-1, in `keep`'s order."""
        old = {id(s): i for i, s in enumerate(self.active)}
        idx = [old[id(s)] for s in keep]
        if idx != list(range(len(keep))):
            self.cache.take(torch.tensor(idx, device=self.device))
            self.logits[:len(keep)] = self.logits[idx]
        self.active = list(keep)
        self.cache.n = len(keep)

    def _append(self, s: TextStream, tok: int) -> None:
        if tok == self.eot:
            s.finish = "stop"
            return
        s.tokens.append(tok)
        piece = self.tokenizer.decode(s.tokens[s._decoded:])
        if not piece.endswith("\ufffd"):                 # wait for the rest of a multi-byte character
            s.text += piece
            s._decoded = len(s.tokens)
            hits = s.stop and [i for i in (s.text.find(x, max(0, len(s.text) - len(piece) - len(x) + 1))
                                           for x in s.stop) if i >= 0]
            if hits:
                s.text = s.text[:min(hits)]
                s.finish = "stop"
                return
        if len(s.tokens) >= s.max_new_tokens:
            if s._decoded < len(s.tokens):               # a cut multi-byte character: keep what decodes
                s.text += self.tokenizer.decode(s.tokens[s._decoded:]).rstrip("\ufffd")
                s._decoded = len(s.tokens)
            s.finish = "length"

    def run(self, streams: list[TextStream], on_step=None) -> list[TextStream]:
        """Decode `streams` to the end (more than `slots` of them: they take turns); `on_step(changed)` after
        every step."""
        waiting = list(streams)
        while waiting or self.active:
            if waiting and self.free:
                batch, waiting = waiting[:self.free], waiting[self.free:]
                self.add(*batch)
            changed = self.step()
            if on_step is not None:
                on_step(changed)
        return streams


def sample_tokens(model: GPT, rows: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> list[list[int]]:
    """Token ids: each prompt row followed by its new tokens (no tokenizer: no stop strings or end-of-text)."""
    engine = TextEngine(model, _NoText(), slots=max(1, len(rows)))
    streams = [TextStream(list(r), max_new_tokens, temperature, top_k, top_p, row_seed(seed, i))
               for i, r in enumerate(rows)]
    engine.run(streams)
    return [s.prompt + s.tokens for s in streams]


class _NoText:
    eot_id = None

    @staticmethod
    def decode(ids) -> str:
        return ""
