"""Diffusion recipe: a U-Net denoiser (models/unet.py) trained on the DDPM objective, sampled with the
DDPM or DDIM samplers of aigc/diffusion, with classifier-free guidance for class labels or captions.

Training step (DDPM, Algorithm 1): x_0 from the data scaled to [-1, 1], t ~ U{0..T-1}, eps ~ N(0, I),
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4), loss = ||target - net(x_t, t, c)||^2 (eq. 14's
simple loss; target eps or v), optionally weighted per timestep by min-SNR-gamma (`model.min_snr`, see
Schedule.min_snr_weight). With probability `p_uncond` the condition c is replaced by the learned
empty condition, so the same network also learns the unconditional model guidance needs."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from aigc.config import RunConfig
from aigc.diffusion import Schedule, guided, inputs_per_sample
from aigc.diffusion import sample as run_sampler
from aigc.diffusion.samplers import FEW_STEP, SAMPLERS, frame_noise
from aigc.diffusion.schedule import PREDICTIONS, SCHEDULES
from aigc.errors import AigcError, check_choice
from aigc.io.images import save_grid
from aigc.models.text_encoder import WordVocab
from aigc.models.unet import DiffusionConfig, UNet, check_size
from aigc.recipes.base import ImageRecipe

# DiffusionConfig fields that only video-diffusion reads: set anywhere else they would silently do nothing.
VIDEO_ONLY = ("temporal_attention", "spacetime_attention", "temporal_conv", "temporal_pos", "joint_images",
              "window_start0", "train_frames", "noise_corr", "sample_window", "frame_map")


class DiffusionRecipe(ImageRecipe):
    family = "diffusion"
    ModelConfig = DiffusionConfig
    has_sampler = True
    sample_batch = 500               # samples per sampler call when generating many

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        m = cfg.model
        self.shape, self.net = self.build_net(cfg)
        for layer in self.net.modules():                 # the 2D convolutions' weights (3D ones stay as they are)
            if isinstance(layer, torch.nn.Conv2d):
                layer.to(memory_format=torch.channels_last)
        self.modules = {"unet": self.net}
        self.schedule = Schedule(m.schedule, m.T, m.prediction, m.schedule_shift)
        self.noise = frame_noise(m.noise_corr)
        self.vocab = WordVocab(m.text_vocab) if m.cond == "text" else None
        self.device = torch.device("cpu")

    @staticmethod
    def build_net(cfg: RunConfig):
        """(the shape of one sample, the denoiser)."""
        shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
        return shape, UNet(cfg.model, shape)

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        check_choice("model.schedule", m.schedule, SCHEDULES)
        check_choice("model.prediction", m.prediction, PREDICTIONS)
        check_choice("model.sampler", m.sampler, SAMPLERS)
        check_choice("model.cond", m.cond, ("none", "class", "text"))
        if m.T < 2 or not 1 <= m.sample_steps <= m.T:
            raise AigcError(f"model.T must be >= 2 and model.sample_steps in 1..T ({m.T})")
        if m.cond_map < 0:
            raise AigcError(f"model.cond_map must be >= 0 (channels of the condition map), got {m.cond_map}")
        if m.width < 1 or m.blocks < 1 or not m.mults or min(m.mults) < 1 or m.patch < 1:
            raise AigcError("model.width, blocks, patch and every entry of model.mults must be positive")
        if m.width % m.heads or m.width % m.groups:
            raise AigcError(f"model.width ({m.width}) must be divisible by model.heads ({m.heads}) and "
                            f"model.groups ({m.groups})")
        if not 0 <= m.attn_levels <= len(m.mults):
            raise AigcError(f"model.attn_levels must be in 0..{len(m.mults)}")
        if m.schedule_shift <= 0:
            raise AigcError(f"model.schedule_shift must be > 0 (1 = the schedule as it is), got {m.schedule_shift}")
        if m.min_snr < 0:
            raise AigcError(f"model.min_snr must be >= 0 (0 = the plain loss, else the min-SNR gamma), got {m.min_snr}")
        if cfg.family != "video-diffusion":
            changed = [k for k in VIDEO_ONLY if getattr(m, k) != getattr(DiffusionConfig, k)]
            if changed:
                raise AigcError(f"model.{', model.'.join(changed)}: option(s) of video-diffusion only; "
                                f"image diffusion has no frames")
        if not 0 <= m.noise_corr < 1:
            raise AigcError(f"model.noise_corr must be in [0, 1) (the noise correlation between frames), got {m.noise_corr}")
        if not 0 <= m.p_uncond <= 1 or m.guidance < 0 or m.eta < 0:
            raise AigcError("model.p_uncond must be in [0, 1], model.guidance and model.eta >= 0")

    @staticmethod
    def load_data(cfg, run_dir: Path | None = None):
        data = ImageRecipe.load_data(cfg, run_dir)
        DiffusionRecipe.check_unet_size(cfg, "image")
        ImageRecipe.set_condition(cfg, data)
        return data

    @staticmethod
    def check_unet_size(cfg, what: str) -> None:
        """A clear error when the U-Net cannot take the data's `what` (image / frame) size."""
        m, size = cfg.model, cfg.data.image_size
        try:
            if size % m.patch:
                raise ValueError(f"model.patch = {m.patch} does not divide the {what} size {size}")
            check_size(size // m.patch, len(m.mults))
        except ValueError as e:
            raise AigcError(str(e)) from None

    # ---------------------------------------------------------------- conditions
    def _condition(self, batch: dict, drop: float = 0.0, generator=None):
        """The batch's condition input, each row replaced by the empty condition with probability `drop`."""
        m, dev = self.cfg.model, self.device_of()
        if m.cond == "none":
            return None
        c = batch["label"] if m.cond == "class" else self.vocab.encode(batch["caption"])
        c = c.to(dev)
        if drop > 0:
            mask = torch.rand(len(c), generator=generator) < drop
            null = self.net.null_condition(len(c), dev)
            c = torch.where(mask.to(dev).view(-1, *([1] * (c.dim() - 1))), null, c)
        return c

    # ---------------------------------------------------------------- trainer hooks
    def param_groups(self):
        return {"unet": list(self.net.parameters())}

    def ema_modules(self):
        return self.modules

    def _loss(self, x0: torch.Tensor, c, generator=None, weighted: bool = False, frame_index=None) -> torch.Tensor:
        """The simple DDPM loss on a batch in [-1, 1] at random timesteps (per-sample mean squared error);
        `weighted` applies the min-SNR weight when model.min_snr > 0 (training only, so eval losses of runs
        with and without it stay comparable)."""
        t = torch.randint(self.schedule.T, (len(x0),), generator=generator).to(x0.device)
        noise = self.noise(x0.shape, generator, x0.device, torch.float32)
        x_t = self.schedule.q_sample(x0, t, noise)
        out = self.net(x_t, t, c, frame_index)
        loss = F.mse_loss(out.float(), self.schedule.target(x0, t, noise), reduction="none").flatten(1).mean(1)
        if weighted and self.cfg.model.min_snr > 0:
            loss = loss * self.schedule.min_snr_weight(t, self.cfg.model.min_snr, loss)
        return loss

    def train_step(self, batch, opt):
        x0 = batch[self.data_key].to(self.device_of()) * 2 - 1
        c = self._condition(batch, self.cfg.model.p_uncond)
        loss = self._loss(x0, c, weighted=True).mean()
        opt.update("unet", loss)
        return {"loss": loss.detach()}

    def evaluate(self, data, max_batches=None, num=None) -> dict[str, float]:
        """The training loss on the eval split at timesteps and noise drawn from a fixed seed (so values
        are comparable across steps), with the full condition."""
        g = torch.Generator().manual_seed(0)
        total, n = 0.0, 0
        limit = num if max_batches is None else max_batches * 250
        for batch in data.eval_batches(250, limit):
            x0 = batch[self.data_key].to(self.device_of()) * 2 - 1
            total += self._loss(x0, self._condition(batch), g).sum().item()
            n += len(x0)
        return {"eval_loss": round(total / max(n, 1), 5), "num_eval": n}

    def save_samples(self, path: Path) -> None:
        """A grid from the same noise every time (class-conditional: one row per class; text: fixed
        captions), and beside it the denoising trajectory of 8 of them."""
        m = self.cfg.model
        g = torch.Generator().manual_seed(1234)
        labels = prompts = None
        if m.cond == "class":
            labels = torch.arange(m.num_classes).repeat_interleave(8)
        elif m.cond == "text":
            prompts = self.random_prompts(64, g)
        n = len(labels) if labels is not None else 64
        c = self._cond_for(labels, prompts)
        images = self._sample(n, c, generator=g)
        save_grid(path, images, nrow=8)
        sel = torch.arange(0, n, max(1, n // 8))[:8]
        strip = self._trajectory(len(sel), c[sel] if c is not None else None, torch.Generator().manual_seed(99))
        save_grid(Path(path).with_name(Path(path).stem + "_trajectory.png"), strip, nrow=len(strip) // len(sel))

    # ---------------------------------------------------------------- sampling
    def _cond_for(self, labels=None, prompts=None):
        if labels is not None:
            return labels.to(self.device_of())
        if prompts is not None:
            return self.vocab.encode(prompts).to(self.device_of())
        return None

    def sampling_net(self):
        """The net(x, t, c) the samplers denoise with (the video recipe runs it on windows of frames)."""
        return self.net

    def _denoiser(self, c, guidance: float):
        net = self.sampling_net()
        if c is None:
            return lambda x, t: net(x, t, None)
        return guided(net, c, self.net.null_condition(len(c), c.device), guidance)

    def _sample(self, n: int, c, sampler=None, steps=None, guidance=None, generator=None, record=0, progress=None):
        """n images in [0, 1] (or (images, frames) with record > 0)."""
        m = self.cfg.model
        sampler = sampler or m.sampler
        steps = steps or (m.sample_steps if sampler in FEW_STEP else None)
        w = m.guidance if guidance is None else guidance
        out = run_sampler(sampler, self._denoiser(c, w), self.schedule, (n, *self.shape), steps, eta=m.eta,
                          generator=generator, device=self.device_of(), clip=m.clip, record=record, progress=progress,
                          noise=self.noise)
        if record:
            x, frames = out
            return (x + 1) / 2, [(f.clamp(-1, 1) + 1) / 2 for f in frames]
        return ((out + 1) / 2).clamp(0, 1)

    def _trajectory(self, n: int, c, generator=None, sampler=None, steps=None, guidance=None, frames: int = 10):
        """Rows of x_T -> x_0: each row one sample, `frames` + 1 snapshots of x_t."""
        _, snaps = self._sample(n, c, sampler, steps, guidance, generator, record=frames)
        return torch.stack(snaps, 1).flatten(0, 1)

    def _check_options(self, label, prompt, steps, guidance, sampler):
        m = self.cfg.model
        if sampler is not None:
            check_choice("--sampler", sampler, SAMPLERS)
        if steps is not None and not 1 <= steps <= m.T:
            raise AigcError(f"--steps must be in 1..{m.T} (the model's T), got {steps}")
        if guidance is not None and guidance < 0:
            raise AigcError(f"--guidance must be >= 0 (1 = plain conditional, 0 = unconditional), got {guidance}")
        if guidance is not None and m.cond == "none":
            raise AigcError("--guidance needs a conditional model; this one has cond = \"none\"")
        self.check_condition_args(label, prompt)

    def sample_for(self, labels=None, prompts=None, num=None, sampler=None, steps=None, guidance=None,
                   progress=None) -> torch.Tensor:
        """Samples in [0, 1], one per label or prompt (or `num` of an unconditional model), in batches."""
        c = self._cond_for(labels, prompts)
        n = len(c) if c is not None else num
        w = self.cfg.model.guidance if guidance is None else guidance
        # chunks sized so that the net's batch stays at sample_batch when guidance runs cond and null together:
        # on CPU a doubled batch cost 3.2x per call (video, 192 windows: its activations outgrow the caches),
        # so 32 guided clips took 55 s in one chunk against 36 s in two
        per = self.sample_batch if c is None else max(1, self.sample_batch // inputs_per_sample(w))
        chunks = []
        for i in range(0, n, per):
            j = min(n, i + per)
            chunks.append(self._sample(j - i, c[i:j] if c is not None else None, sampler, steps, guidance))
            if progress:
                progress(j - i)
        return torch.cat(chunks)

    def generate(self, num: int, label=None, prompt=None, steps=None, guidance=None, sampler=None, **_) -> dict:
        self._check_options(label, prompt, steps, guidance, sampler)
        out = self.requested_conditions(num, label, prompt)
        out["images"] = self.sample_for(out.get("labels"), out.get("prompts"), num, sampler, steps, guidance)
        return out

    def trajectory(self, num: int, label=None, prompt=None, steps=None, guidance=None, sampler=None) -> dict:
        """The denoising trajectory x_T -> x_0 of `num` samples, one row each."""
        self._check_options(label, prompt, steps, guidance, sampler)
        req = self.requested_conditions(num, label, prompt)
        c = self._cond_for(req.get("labels"), req.get("prompts"))
        return {"images": self._trajectory(num, c, None, sampler, steps, guidance), "nrow": 11}

    def generate_for_eval(self, data, num: int, sampler=None, steps=None, guidance=None, progress=None):
        """`num` samples for the sample-quality metrics (conditions from `eval_conditions`)."""
        labels, prompts = self.eval_conditions(data, num)
        return self.sample_for(labels, prompts, num, sampler, steps, guidance, progress), labels, prompts

    def full_eval(self, data, num=None, k=None, progress=None) -> dict:
        """The denoising loss on the eval split (fixed timesteps and noise); sample quality follows."""
        m = self.cfg.model
        out = self.evaluate(data, num=num)
        steps = m.sample_steps if m.sampler in FEW_STEP else m.T
        return {**out, "sampler": m.sampler, "sampler_steps": steps, "guidance": m.guidance if m.cond != "none" else None,
                "note": "eval_loss = the DDPM simple loss on the eval split; sample_quality uses the sampler above"}
