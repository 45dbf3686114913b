"""VAE recipe: the model of models/vae.py trained on the negative beta-ELBO."""

from __future__ import annotations

from pathlib import Path

import torch

from aigc.config import RunConfig
from aigc.errors import AigcError, check_choice
from aigc.generation import DEFAULT_NUM
from aigc.io.images import save_grid
from aigc.metrics.likelihood import iwae_nll
from aigc.models.vae import VAE, VAEConfig
from aigc.recipes.base import ImageRecipe


class VAERecipe(ImageRecipe):
    family = "vae"
    ModelConfig = VAEConfig
    WHATS = ("samples", "reconstructions", "interpolation")

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
        self.model = VAE(cfg.model, shape)
        self.modules = {"vae": self.model}
        self.device = torch.device("cpu")

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        check_choice("model.arch", m.arch, ("conv", "mlp"), " for the VAE")
        if m.z_dim < 1 or m.beta < 0 or m.hidden < 1 or m.width < 1 or m.layers < 1:
            raise AigcError("model.z_dim, hidden, width, layers must be positive and model.beta >= 0")

    # ---------------------------------------------------------------- trainer hooks
    def param_groups(self):
        return {"model": list(self.model.parameters())}

    def ema_modules(self):
        return self.modules

    def train_step(self, batch, opt):
        out = self.model.loss(batch["image"])
        opt.update("model", out["loss"])
        return {k: v.detach() for k, v in out.items()}

    def evaluate(self, data, max_batches=None, num=None) -> dict[str, float]:
        """Single-sample -ELBO on the eval split (nats per image): the first `max_batches` batches of 500 or
        the first `num` images; the whole split when both are None."""
        sums, n = {}, 0
        limit = num if max_batches is None else max_batches * 500
        for batch in data.eval_batches(500, limit):
            x = batch["image"].to(self.device_of())
            out = self.model.loss(x)
            for k in ("nelbo", "rec", "kl"):
                sums[k] = sums.get(k, 0.0) + out[k].item() * len(x)
            n += len(x)
        return {f"test_{k}": round(v / n, 4) for k, v in sums.items()} | {"num_test": n}

    def save_samples(self, path: Path) -> None:
        save_grid(path, self.model.sample(64), nrow=8)

    # ---------------------------------------------------------------- sampling and evaluation
    def describe_model(self) -> str:
        return "unconditional VAE"

    def generate(self, request, stream=None, progress=None):
        num = request.num or DEFAULT_NUM[self.output]
        if request.what == "samples":
            return self.result(self.model.sample(num))
        data = self.load_data(self.cfg)
        if request.what == "reconstructions":
            return self.result(self.reconstructions(data, num), nrow=16)
        return self.result(self.interpolations(data, pairs=max(1, num // 10)), nrow=10)

    def generate_for_eval(self, data, num: int):
        """`num` samples (Bernoulli means, as in the grids) for the sample-quality metrics."""
        return self.result(torch.cat([self.model.sample(min(1000, num - i)) for i in range(0, num, 1000)]))

    def reconstructions(self, data, num: int) -> torch.Tensor:
        """Rows of (original, reconstruction) pairs from the eval split."""
        x = next(data.eval_batches(num))["image"].to(self.device_of())
        rec = self.model.reconstruct(x)
        return torch.stack([x, rec], 1).flatten(0, 1)

    def interpolations(self, data, pairs: int = 8, steps: int = 10) -> torch.Tensor:
        x = next(data.eval_batches(2 * pairs))["image"].to(self.device_of())
        return self.model.interpolate(x[:pairs], x[pairs:2 * pairs], steps)

    def full_eval(self, data, num: int | None = None, k: int = 1000, progress=None) -> dict:
        """Test -ELBO (one z per image) and the IWAE bound with k importance samples, nats per image."""
        dev = self.device_of()
        n = min(num or len(data.eval), len(data.eval))
        elbo = self.evaluate(data, num=n)
        bs = max(1, min(100, 20000 // max(k, 1)))                     # images per IWAE batch
        xs = (b["image"].to(dev) for b in data.eval_batches(bs, n))
        iw = iwae_nll(self.model.log_weights, xs, k, chunk=min(k, 250), progress=progress)
        return {"test_nelbo": elbo["test_nelbo"], "test_nll_iwae": round(iw["nll_iwae"], 4), "iwae_k": k,
                "test_rec": elbo["test_rec"], "test_kl": elbo["test_kl"],
                "num_samples": n, "reference_split": f"{data.name} eval split "
                                                     f"({'test' if data.name == 'mnist' else 'held-out'})",
                "binarization": "dynamic (test set binarised once, seed 2024)" if data.binarize
                else "none (grey levels in [0,1], BCE)", "units": "nats per image"}
