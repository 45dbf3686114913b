"""Text GAN recipe: fixed-length character sequences from a Gumbel-softmax generator against a
convolutional discriminator over one-hot sequences (models/text_gan.py), with the image GAN's losses.

It is here to be compared, honestly, with the GPT family on the same corpus: n-gram precision against
the validation text, and the loss a trained GPT assigns to its samples (benchmarks/text_gan.py). Real
windows of the corpus are what D sees as real; what G makes has no left context and a fixed length."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from aigc.config import RunConfig
from aigc.errors import AigcError, check_choice
from aigc.generation import Text
from aigc.metrics.text import ngram_precision, ngram_set
from aigc.models.text_gan import TextDiscriminator, TextGANConfig, TextGenerator, gumbel_softmax
from aigc.recipes.base import TextRecipe
from aigc.recipes.gan import LOSSES, Adversarial, d_loss
from aigc.train.dist import draw_rows


class TextGANRecipe(Adversarial, TextRecipe):
    family = "text-gan"
    ModelConfig = TextGANConfig

    def __init__(self, cfg: RunConfig):
        self._pair(cfg, TextGenerator(cfg.model), TextDiscriminator(cfg.model))

    @staticmethod
    def window(cfg) -> int:
        return cfg.model.seq_len - 1                    # batches hold window + 1 = seq_len tokens

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        if cfg.data.name not in ("text", "code"):
            raise AigcError(f"the text-gan family trains on text or code, not '{cfg.data.name}'")
        if cfg.data.tokenizer != "char":
            raise AigcError("the text GAN generates one-hot characters: use data.tokenizer = \"char\"")
        if m.seq_len < 4 or m.seq_len % 4:
            raise AigcError(f"model.seq_len must be a positive multiple of 4, got {m.seq_len}")
        check_choice("model.loss", m.loss, LOSSES)
        if m.tau <= 0 or min(m.z_dim, m.hidden, m.embd) < 1:
            raise AigcError("model.tau must be > 0 and z_dim, hidden, embd positive")

    # ---------------------------------------------------------------- trainer hooks
    def _fake(self, n: int) -> torch.Tensor:
        z = draw_rows(lambda shape: torch.randn(shape), (n, self.cfg.model.z_dim)).to(self.device_of())
        return gumbel_softmax(self.G(z), self.cfg.model.tau, self.cfg.model.hard)

    def train_step(self, batch, opt):
        m = self.cfg.model
        real = F.one_hot(batch["tokens"].to(self.device_of()), m.vocab_size).float()
        n = len(real)
        with torch.no_grad():
            fake = self._fake(n)
        r, f = self.D(real), self.D(fake)
        ld = d_loss(m.loss, r, f)
        opt.update("D", ld)
        lg = self.g_update(lambda: self.D(self._fake(n)), opt)
        return {**self.d_stats(ld, r, f), "g_loss": lg}

    def _reference(self, data) -> dict[int, set]:
        if getattr(data, "_ngram_sets", None) is None:
            text = self.tokenizer.decode(data.val.tolist())
            data._ngram_sets = {n: ngram_set(text, n) for n in (2, 3, 4)}
        return data._ngram_sets

    def evaluate(self, data, max_batches=None) -> dict[str, float]:
        """n-gram precision (n = 2, 3, 4) of samples against the validation text: 256 samples during
        training, 2000 at the end."""
        num = 256 if max_batches is not None else 2000
        texts = self.sample_texts(num)
        return {**ngram_precision(texts, self._reference(data)), "num_samples": num}

    def save_samples(self, path: Path) -> None:
        Path(path).with_suffix(".txt").write_text("\n".join(self.sample_texts(16)) + "\n", encoding="utf-8")

    def full_eval(self, data, num=None, k=None, progress=None) -> dict:
        return {**self.evaluate(data), "seq_len": self.cfg.model.seq_len,
                "reference_split": "last 10% of the corpus (validation text)",
                "definition": "share of the samples' character n-grams found in the validation text"}

    # ---------------------------------------------------------------- sampling
    def sample_texts(self, num: int, temperature: float = 1.0) -> list[str]:
        """Each position is sampled from softmax(logits / temperature) (Gumbel-max); 0 = argmax."""
        z = torch.randn(num, self.cfg.model.z_dim).to(self.device_of())
        logits = self.G(z).float()
        if temperature == 0:
            ids = logits.argmax(-1)
        else:
            ids = torch.distributions.Categorical(logits=logits / temperature).sample()
        return [self.tokenizer.decode(r) for r in ids.tolist()]

    def accepts(self) -> set[str]:
        return {"temperature"}

    def describe_model(self) -> str:
        return "text GAN (it generates fixed-length sequences from noise, with no prompt)"

    @torch.inference_mode()
    def generate(self, request, stream=None, progress=None) -> Text:
        """`num` sequences of seq_len characters, each position sampled at `temperature` (default 1)."""
        temperature = 1.0 if request.temperature is None else request.temperature
        if temperature < 0:
            raise AigcError("--temperature must be >= 0")
        texts = self.sample_texts(request.num or 1, temperature)
        if stream is not None:
            for t in texts:
                stream(t + "\n")
        return Text(texts)
