"""GAN recipe: alternate discriminator and generator updates on the losses below.

Data are scaled to [-1, 1] to match G's Tanh output. (The material's code feeds [0, 1] data to a
discriminator that sees Tanh outputs in [-1, 1]: D can then tell real from fake by the sign of the
background pixels alone, one reason its samples stay speckled.)

Losses on D's logits r = D(x), f = D(G(z)) (softplus(t) = log(1 + e^t), so log sigmoid(t) = -softplus(-t)):
- minimax (Goodfellow et al. 2014, eq. 1):  L_D = softplus(-r) + softplus(f);  L_G = -softplus(f)
  (= E log(1 - D(G(z))), which saturates: when D rejects the samples, G's gradient vanishes);
- ns, non-saturating (same paper, section 3):  L_D as above;  L_G = softplus(-f) = -log D(G(z));
- hinge (Lim & Ye 2017; Miyato et al. 2018):  L_D = relu(1 - r) + relu(1 + f);  L_G = -f.
Stabilisers, each a config switch: spectral normalisation of D (Miyato et al. 2018), the R1 penalty
(gamma/2) E||grad_x D(x)||^2 on real data (Mescheder et al. 2018), optionally lazy (every N steps, scaled
by N; Karras et al. 2020), an EMA of G's weights for sampling (Yazici et al. 2019), and separate learning
rates for G and D (TTUR, Heusel et al. 2017). For conditional GANs, the mode-seeking term (Mao et al. 2019)
adds lambda / (|G(z1, y) - G(z2, y)| / |z1 - z2|) to G's loss, penalising a G that ignores z."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from aigc.config import RunConfig
from aigc.errors import AigcError, check_choice
from aigc.generation import DEFAULT_NUM
from aigc.io.images import save_grid
from aigc.models.gan import Discriminator, GANConfig, Generator, base_size
from aigc.models.text_encoder import caption_vocab
from aigc.recipes.base import ImageRecipe
from aigc.train.dist import draw_rows

LOSSES = ("ns", "minimax", "hinge")
WIN_STEPS = 500                  # consecutive steps of D(x) > 0.99 and D(G(z)) < 0.01 before we warn


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss on logits (mean over the batch)."""
    return (F.relu(1 - real).mean() if kind == "hinge" else F.softplus(-real).mean()) + d_fake_loss(kind, fake)


def d_fake_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """The part of the discriminator loss on logits it should read as fake."""
    return F.relu(1 + fake).mean() if kind == "hinge" else F.softplus(fake).mean()


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss on D's logits for generated samples."""
    if kind == "minimax":
        return -F.softplus(fake).mean()
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over real inputs (which must require grad); create_graph for the D update."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def mismatched(y: torch.Tensor, one_word: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditions that do not fit their inputs, for the matching-aware discriminator: the batch's conditions
    rolled by one (labels (B,) or captions (B, L) of token ids), or with `one_word` each caption with one of its
    word positions taken from the rolled caption (a near miss: the caption wrong in one attribute). -> (rows whose
    condition changed, the conditions)."""
    rolled = y.roll(1, 0)
    if one_word and y.dim() == 2:
        at = torch.multinomial((y != 0).float() + 1e-6, 1)                    # one non-padding position per caption
        rolled = y.scatter(1, at, rolled.gather(1, at))
    changed = (rolled != y).flatten(1).any(1) if y.dim() > 1 else rolled != y
    return changed, rolled


def word_loss(logits: torch.Tensor, y: torch.Tensor, named: bool = True) -> torch.Tensor:
    """A caption-word classifier's loss (AC-GAN, Odena et al. 2017, with the caption's words for classes):
    binary cross-entropy per vocabulary entry of `logits` (B, vocabulary) against the words of the captions
    y (B, L) of token ids, the padding id 0 left out. named = False: against no word at all (what the
    classifier learns of generated samples with `words_fake`)."""
    target = torch.zeros_like(logits)
    if named:
        target.scatter_(1, y.to(logits.device), 1.0)
    return F.binary_cross_entropy_with_logits(logits[:, 1:], target[:, 1:])


def split_words(out):
    """D's output -> (logits, word logits or None): a D with a word classifier returns both."""
    return out if isinstance(out, tuple) else (out, None)


def pooled(x: torch.Tensor, k: int) -> torch.Tensor:
    """Images (..., H, W) average-pooled k x k (k = 1: as they are), for the mode-seeking distance."""
    return x if k <= 1 else F.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), k)


class Adversarial:
    """What every GAN recipe shares: a generator G and a discriminator D with one optimiser each (base
    learning rates `lr_g` / `lr_d`, TTUR), an EMA of G only, and the generator update through a frozen D.
    The model config needs `loss`, `lr_g` and `lr_d`."""

    def _pair(self, cfg: RunConfig, G: torch.nn.Module, D: torch.nn.Module) -> None:
        self.cfg, self.G, self.D = cfg, G, D
        self.modules = {"G": G, "D": D}
        self.lrs = {"G": cfg.model.lr_g or cfg.train.lr, "D": cfg.model.lr_d or cfg.train.lr}
        self.device = torch.device("cpu")
        self._wins, self._warned, self._step = 0, False, 0

    def param_groups(self):
        return {"G": list(self.G.parameters()), "D": list(self.D.parameters())}

    def ema_modules(self):
        return {"G": self.G}

    @staticmethod
    def d_stats(loss: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """The D loss and D's mean output (sigmoid of the logits) on real and generated inputs."""
        return {"d_loss": loss.detach(), "d_real": torch.sigmoid(real.detach()).mean(),
                "d_fake": torch.sigmoid(fake.detach()).mean()}

    def adversarial(self, fn, *outputs) -> torch.Tensor:
        """fn of D's real/fake logits in `outputs` (D's outputs for one or more batches). The image GAN's D has one
        head; a recipe with several discriminators overrides this with their weighted sum."""
        return fn(*(split_words(o)[0] for o in outputs))

    def words(self, out, y, named: bool = True):
        """aux_words x D's word classifier's loss on D's output `out` for inputs with captions y (0 without one);
        named = False: against no word. A recipe with several classifiers overrides this with their sum."""
        logits = split_words(out)[1]
        return 0.0 if logits is None else self.cfg.model.aux_words * word_loss(logits, y, named)

    def generator_loss(self, fake, y=None) -> torch.Tensor:
        """G's loss on D's outputs for its samples made with conditions y, plus the word classifiers' loss on
        the samples against their captions."""
        return self.adversarial(lambda f: g_loss(self.cfg.model.loss, f), fake) + self.words(fake, y)

    def discriminator_loss(self, real, fake, y=None) -> torch.Tensor:
        """D's loss on its outputs for real inputs with conditions y and for samples made with them; the word
        classifiers learn the real inputs' words, and with `words_fake` that the samples show none."""
        loss = self.adversarial(lambda a, b: d_loss(self.cfg.model.loss, a, b), real, fake) + self.words(real, y)
        return loss + self.words(fake, y, named=False) if self.cfg.model.words_fake else loss

    def r1_logits(self, real) -> torch.Tensor:
        """What the R1 penalty differentiates with respect to the real inputs."""
        return self.adversarial(lambda a: a, real)

    def mismatch_loss(self, wrong) -> torch.Tensor:
        """D's loss on its outputs for real inputs shown with another input's condition: read them as fake."""
        return self.adversarial(lambda a: d_fake_loss(self.cfg.model.loss, a), wrong)

    def d_update(self, x: torch.Tensor, fake: torch.Tensor, y, opt):
        """One discriminator update on real inputs x against generated ones (no grad to G), with the lazy
        R1 penalty when due. Returns (loss, R1 penalty or None, D's logits on x, on fake)."""
        m = self.cfg.model
        use_r1 = m.r1 > 0 and self._step % m.r1_every == 0
        real_in = x.detach().requires_grad_(use_r1)
        r, f = self.D(real_in, y), self.D(fake, y)
        loss = self.discriminator_loss(r, f, y)
        if m.mismatch > 0 and y is not None and len(x) > 1:     # the matching-aware D (Reed et al. 2016)
            keep, wrong = mismatched(y, m.mismatch_words)
            if keep.any():
                loss = loss + m.mismatch * self.mismatch_loss(self.D(x.detach()[keep], wrong[keep]))
        pen = None
        if use_r1:
            pen = r1_penalty(self.r1_logits(r), real_in)
            loss = loss + 0.5 * m.r1 * m.r1_every * pen
        opt.update("D", loss)
        return loss, pen, r, f

    def _watch(self, d_real: float, d_fake: float) -> None:
        """Warn once when D wins completely for many steps: G then learns nothing (a collapsed run)."""
        self._wins = self._wins + 1 if (d_real > 0.99 and d_fake < 0.01) else 0
        if self._wins >= WIN_STEPS and not self._warned:
            self._warned = True
            print(f"\nwarning: the discriminator has won completely for {WIN_STEPS} steps (D(x) > 0.99, "
                  f"D(G(z)) < 0.01): the generator gets almost no signal and training has likely collapsed. "
                  f"Try model.loss=\"ns\" or \"hinge\", model.spectral_norm=true, model.r1=1, or a lower "
                  f"model.lr_d.", file=sys.stderr)

    def g_step_on(self, z: torch.Tensor, y, opt, extra=None) -> torch.Tensor:
        """One generator update on G(z, y). With model.mode_seeking = lam > 0 (Mao et al. 2019) the two halves
        of the batch share their conditions, so their distance in output space per unit of distance in z is how
        much G uses z; lam over it is added to G's loss. With model.mode_seeking_pool = p > 1 the distance is
        taken between the samples average-pooled p x p (their layout: where things are, not the texture inside
        them, which is the cheapest way to differ). `extra(fake)`: another regulariser of the samples."""
        lam, n = self.cfg.model.mode_seeking, len(z)
        seek = lam > 0 and n >= 2
        k = n // 2
        if seek and y is not None:
            y = torch.cat([y[:k], y[:k], y[2 * k:]])
        fake = self.G(z, y)
        reg = extra(fake) if extra is not None else None
        if seek:
            a, b = (pooled(x, self.cfg.model.mode_seeking_pool) for x in (fake[:k], fake[k:2 * k]))
            ratio = (a - b).abs().mean() / (z[:k] - z[k:2 * k]).abs().mean()
            reg = lam / (ratio + 1e-5) + (0 if reg is None else reg)
        return self.g_update(lambda: self.D(fake, y), opt, extra=reg, y=y)

    def g_update(self, fake_logits, opt, extra=None, y=None) -> torch.Tensor:
        """One generator update on `fake_logits()` (D's logits for fresh samples) through a frozen D:
        D gets no gradients and keeps its weights. `extra`: a regulariser added to the loss (not reported);
        `y`: the samples' conditions, for `generator_loss`."""
        self.D.requires_grad_(False)
        try:
            loss = self.generator_loss(fake_logits(), y)
            opt.update("G", loss if extra is None else loss + extra)
        finally:
            self.D.requires_grad_(True)
        return loss.detach()


class GANRecipe(Adversarial, ImageRecipe):
    family = "gan"
    ModelConfig = GANConfig

    def __init__(self, cfg: RunConfig):
        m = cfg.model
        self.shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
        self._pair(cfg, Generator(m, self.shape), Discriminator(m, self.shape))
        self.vocab = caption_vocab(m) if m.cond == "text" else None

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        check_choice("model.arch", m.arch, ("mlp", "dcgan"), " for the GAN")
        check_choice("model.loss", m.loss, LOSSES)
        check_choice("model.cond", m.cond, ("none", "class", "text"))
        if min(m.z_dim, m.hidden, m.layers, m.g_width, m.d_width, m.cond_dim, m.mode_seeking_pool) < 1:
            raise AigcError("model.z_dim, hidden, layers, g_width, d_width, cond_dim and mode_seeking_pool must be "
                            "positive")
        if m.r1 < 0 or m.r1_every < 1 or m.d_steps < 1 or m.lr_g < 0 or m.lr_d < 0:
            raise AigcError("model.r1 and lr_g/lr_d must be >= 0, r1_every and d_steps >= 1")
        if min(m.g_convs, m.d_convs, m.mode_seeking, m.aux_words, m.mismatch) < 0:
            raise AigcError("model.g_convs, d_convs, mode_seeking, aux_words and mismatch must be >= 0")
        if m.d_pool and m.arch != "dcgan":
            raise AigcError("model.d_pool sums the dcgan discriminator's feature map; the mlp one has none")

    @staticmethod
    def load_data(cfg, run_dir: Path | None = None):
        data = ImageRecipe.load_data(cfg, run_dir)
        m = cfg.model
        if m.arch == "dcgan":
            try:
                base_size(cfg.data.image_size)
            except ValueError as e:
                raise AigcError(str(e)) from None
        ImageRecipe.set_condition(cfg, data)
        return data

    # ---------------------------------------------------------------- trainer hooks
    def _condition(self, batch: dict):
        c = self.cfg.model.cond
        if c == "class":
            return batch["label"].to(self.device_of())
        if c == "text":
            return self.vocab.encode(batch["caption"]).to(self.device_of())
        return None

    def _z(self, n: int, generator=None) -> torch.Tensor:
        return draw_rows(lambda shape: torch.randn(shape, generator=generator), (n, self.cfg.model.z_dim)).to(
            self.device_of())

    def train_step(self, batch, opt):
        x = batch["image"] * 2 - 1
        y = self._condition(batch)
        self._step += 1
        for _ in range(self.cfg.model.d_steps):
            out = self.d_step(x, y, opt)
        out["g_loss"] = self.g_step(len(x), y, opt)
        self._watch(float(out["d_real"]), float(out["d_fake"]))
        return out

    def d_step(self, x: torch.Tensor, y, opt) -> dict[str, torch.Tensor]:
        """One discriminator update on real images x (in [-1, 1]) against fresh samples; G's weights are
        untouched (its BatchNorm statistics, buffers not weights, follow the batch as in any forward)."""
        with torch.no_grad():
            fake = self.G(self._z(len(x)), y)
        loss, pen, r, f = self.d_update(x, fake, y, opt)
        out = self.d_stats(loss, split_words(r)[0], split_words(f)[0])
        if pen is not None:
            out["r1"] = pen.detach()
        return out

    def g_step(self, n: int, y, opt) -> torch.Tensor:
        """One generator update on n fresh samples with conditions y (see `g_update`, `g_step_on`)."""
        return self.g_step_on(self._z(n), y, opt)

    def evaluate(self, data, max_batches=None) -> dict[str, float]:
        """D's mean output on held-out real images and on fresh samples (a cheap health check; the
        sample-quality figures come from `aigc eval`)."""
        dev = self.device_of()
        sums, n = {"eval_d_real": 0.0, "eval_d_fake": 0.0}, 0
        limit = None if max_batches is None else max_batches * 250
        for batch in data.eval_batches(250, limit):
            x = batch["image"].to(dev) * 2 - 1
            y = self._condition(batch)
            sums["eval_d_real"] += torch.sigmoid(split_words(self.D(x, y))[0]).sum().item()
            sums["eval_d_fake"] += torch.sigmoid(split_words(self.D(self.G(self._z(len(x)), y), y))[0]).sum().item()
            n += len(x)
        return {k: round(v / max(n, 1), 4) for k, v in sums.items()}

    def save_samples(self, path: Path) -> None:
        """A grid from the same noise at every call (so the grids show training progress); class-conditional:
        one row per class; text-conditional: fixed captions of the eval split."""
        g = torch.Generator().manual_seed(1234)
        m = self.cfg.model
        if m.cond == "class":
            k = m.num_classes
            labels = torch.arange(k).repeat_interleave(10)
            save_grid(path, self._images(self._z(len(labels), g), labels.to(self.device_of())), nrow=10)
            return
        prompts = self.random_prompts(64, g) if m.cond == "text" else None
        y = self.vocab.encode(prompts).to(self.device_of()) if prompts else None
        save_grid(path, self._images(self._z(64, g), y), nrow=8)

    # ---------------------------------------------------------------- sampling and evaluation
    def _images(self, z, y=None) -> torch.Tensor:
        return (self.G(z, y).float() + 1).mul_(0.5).clamp_(0, 1)

    def accepts(self) -> set[str]:
        return self.condition_fields()

    def _y(self, labels=None, prompts=None):
        if labels is not None:
            return labels.to(self.device_of())
        return self.vocab.encode(prompts).to(self.device_of()) if prompts is not None else None

    def generate(self, request, stream=None, progress=None):
        self.check_condition_args(request.label, request.prompt)
        num = request.num or DEFAULT_NUM[self.output]
        out = self.requested_conditions(num, request.label, request.prompt)
        images = self._images(self._z(num), self._y(out.get("labels"), out.get("prompts")))
        return self.result(images, out.get("labels"), out.get("prompts"))

    def generate_for_eval(self, data, num: int):
        """`num` samples for the sample-quality metrics: classes in equal shares (class-conditional) or
        the eval split's full captions (text-conditional)."""
        labels, prompts = self.eval_conditions(data, num)
        chunks = []
        for i in range(0, num, 1000):
            j = min(num, i + 1000)
            y = self._y(labels[i:j] if labels is not None else None, prompts[i:j] if prompts is not None else None)
            chunks.append(self._images(self._z(j - i), y))
        return self.result(torch.cat(chunks), labels, prompts)

    def full_eval(self, data, num=None, k=None, progress=None) -> dict:
        """A GAN has no likelihood to report: D's outputs on the eval split; the sample-quality metrics follow."""
        return {**self.evaluate(data), "note": "GANs define no likelihood; see sample_quality"}
