"""Diffusion: a U-Net denoiser (models/unet.py) trained on the DDPM objective, sampled with the DDPM, DDIM
or DPM-Solver++(2M) samplers of aigc/diffusion, with classifier-free guidance for class labels or captions.

Training step (DDPM, Algorithm 1): x_0 from the data scaled to [-1, 1], t ~ U{0..T-1}, eps ~ N(0, I),
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4), loss = ||target - net(x_t, t, c)||^2 (eq. 14's
simple loss; target eps or v), optionally weighted per timestep by min-SNR-gamma (`model.min_snr`, see
Schedule.min_snr_weight). With probability `p_uncond` the condition c is replaced by the learned
empty condition, so the same network also learns the unconditional model guidance needs.

`DiffusionCore` is that machinery for any network and sample shape; the image family here and the video
family (recipes/video.py) each hold one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from aigc.config import RunConfig
from aigc.diffusion import Schedule, guided, inputs_per_sample
from aigc.diffusion import sample as run_sampler
from aigc.diffusion.samplers import FEW_STEP, SAMPLERS, frame_noise
from aigc.diffusion.schedule import PREDICTIONS, SCHEDULES
from aigc.errors import AigcError, check_choice
from aigc.generation import DEFAULT_NUM
from aigc.io.images import save_grid
from aigc.models.text_encoder import caption_vocab
from aigc.models.unet import UNet, UNetConfig, check_size
from aigc.recipes.base import ImageRecipe
from aigc.train.dist import draw_rows

TRAJECTORY_SNAPSHOTS = 10                # x_t snapshots per trajectory row (plus x_T)


@dataclass
class ScheduleConfig:
    """The noise schedule and the training objective."""
    schedule: str = "cosine"         # linear (DDPM) | cosine (improved DDPM)
    T: int = 1000
    schedule_shift: float = 1.0      # > 1 divides every step's SNR by its square (diffusion/schedule.py)
    prediction: str = "eps"          # eps | v
    min_snr: float = 0.0             # > 0: min-SNR-gamma loss weighting with this gamma (Hang et al. 2023; 5 is usual)
    p_uncond: float = 0.1            # chance of training on the empty condition (classifier-free guidance)


@dataclass
class SamplerConfig:
    """Sampling defaults (aigc sample / eval / training grids); requests may override steps, sampler, guidance."""
    sampler: str = "ddim"            # ddim | dpm++2m | ddpm
    sample_steps: int = 50           # ddim / dpm++2m steps (ddpm uses T unless --steps)
    eta: float = 0.0                 # ddim noise (0 = deterministic)
    guidance: float = 1.0            # classifier-free guidance scale (1 = plain conditional)
    clip: bool = True                # clamp the x_0 estimate to [-1, 1] while sampling


VIDEO_KEYS = {"temporal_attention": True, "spacetime_attention": "none", "temporal_conv": "1d", "temporal_pos": "none",
              "joint_images": 0, "window_start0": 0.0, "train_frames": 0, "noise_corr": 0.0, "sample_window": 0,
              "frame_map": False}


@dataclass
class DiffusionConfig(SamplerConfig, ScheduleConfig, UNetConfig):
    """[model] of the diffusion family: the network (UNetConfig), the schedule and loss (ScheduleConfig) and
    the sampler (SamplerConfig), one flat TOML section."""
    # options that aigc 0.1 saved in every diffusion run, with the value such runs can be rebuilt with
    REMOVED: ClassVar[dict] = {"emb_act": False, **VIDEO_KEYS}


def check_diffusion_config(m: DiffusionConfig) -> None:
    check_choice("model.schedule", m.schedule, SCHEDULES)
    check_choice("model.prediction", m.prediction, PREDICTIONS)
    check_choice("model.sampler", m.sampler, SAMPLERS)
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
    if not 0 <= m.p_uncond <= 1 or m.guidance < 0 or m.eta < 0:
        raise AigcError("model.p_uncond must be in [0, 1], model.guidance and model.eta >= 0")


def check_unet_size(cfg, what: str) -> None:
    """A clear error when the U-Net cannot take the data's `what` (image / frame) size."""
    m, size = cfg.model, cfg.data.image_size
    try:
        if size % m.patch:
            raise ValueError(f"model.patch = {m.patch} does not divide the {what} size {size}")
        check_size(size // m.patch, len(m.mults))
    except ValueError as e:
        raise AigcError(str(e)) from None


def channels_last_convs(net: torch.nn.Module) -> torch.nn.Module:
    """The 2D convolutions' weights in channels-last layout (3D ones stay as they are)."""
    for layer in net.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.to(memory_format=torch.channels_last)
    return net


class DiffusionCore:
    """A denoising network with its schedule, loss, conditions and samplers, for samples of `shape`
    (C, H, W) or (C, T, H, W). `sampling_net` is the net(x, t, c) the samplers call (default: `net`);
    `sample_batch` bounds the network's batch when generating many samples."""

    def __init__(self, m: DiffusionConfig, net: UNet, shape: tuple, noise=frame_noise(0.0), sampling_net=None,
                 sample_batch: int = 500):
        self.m, self.net, self.shape, self.noise = m, net, shape, noise
        self.sampling_net = sampling_net or net
        self.sample_batch = sample_batch
        self.schedule = Schedule(m.schedule, m.T, m.prediction, m.schedule_shift)
        self.vocab = caption_vocab(m) if m.cond == "text" else None

    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    # ---------------------------------------------------------------- conditions
    def condition(self, batch: dict, drop: float = 0.0, generator=None):
        """The batch's condition input, each row replaced by the empty condition with probability `drop`."""
        dev = self.device()
        if self.m.cond == "none":
            return None
        c = batch["label"] if self.m.cond == "class" else self.vocab.encode(batch["caption"])
        c = c.to(dev)
        if drop > 0:
            mask = draw_rows(lambda shape: torch.rand(shape, generator=generator), (len(c),)) < drop
            null = self.net.null_condition(len(c), dev)
            c = torch.where(mask.to(dev).view(-1, *([1] * (c.dim() - 1))), null, c)
        return c

    def cond_for(self, labels=None, prompts=None):
        if labels is not None:
            return labels.to(self.device())
        if prompts is not None:
            return self.vocab.encode(prompts).to(self.device())
        return None

    # ---------------------------------------------------------------- training
    def loss(self, x0: torch.Tensor, c, generator=None, weighted: bool = False, frame_index=None) -> torch.Tensor:
        """The simple DDPM loss on a batch in [-1, 1] at random timesteps (per-sample mean squared error);
        `weighted` applies the min-SNR weight when model.min_snr > 0 (training only, so eval losses of runs
        with and without it stay comparable)."""
        t = draw_rows(lambda shape: torch.randint(self.schedule.T, shape, generator=generator), (len(x0),))
        t = t.to(x0.device)
        noise = draw_rows(lambda shape: self.noise(shape, generator, x0.device, torch.float32), x0.shape)
        x_t = self.schedule.q_sample(x0, t, noise)
        out = self.net(x_t, t, c, frame_index)
        loss = F.mse_loss(out.float(), self.schedule.target(x0, t, noise), reduction="none").flatten(1).mean(1)
        if weighted and self.m.min_snr > 0:
            loss = loss * self.schedule.min_snr_weight(t, self.m.min_snr, loss)
        return loss

    def train_step(self, batch: dict, key: str, opt) -> dict:
        x0 = batch[key].to(self.device()) * 2 - 1
        loss = self.loss(x0, self.condition(batch, self.m.p_uncond), weighted=True).mean()
        opt.update("unet", loss)
        return {"loss": loss.detach()}

    def evaluate(self, data, max_batches=None, num=None) -> dict[str, float]:
        """The training loss on the eval split at timesteps and noise drawn from a fixed seed (so values
        are comparable across steps), with the full condition."""
        g = torch.Generator().manual_seed(0)
        total, n = 0.0, 0
        limit = num if max_batches is None else max_batches * 250
        for batch in data.eval_batches(250, limit):
            x0 = batch[data.eval.key].to(self.device()) * 2 - 1
            total += self.loss(x0, self.condition(batch), g).sum().item()
            n += len(x0)
        return {"eval_loss": round(total / max(n, 1), 5), "num_eval": n}

    def summary(self) -> dict:
        """What `aigc eval` reports beside the eval loss: the sampler the sample metrics used."""
        m = self.m
        return {"sampler": m.sampler, "sampler_steps": m.sample_steps if m.sampler in FEW_STEP else m.T,
                "guidance": m.guidance if m.cond != "none" else None,
                "note": "eval_loss = the DDPM simple loss on the eval split; sample_quality uses the sampler above"}

    # ---------------------------------------------------------------- sampling
    def accepts(self) -> set[str]:
        return {"steps", "sampler"} | ({"guidance"} if self.m.cond != "none" else set())

    def check_request(self, request) -> None:
        """Clear errors for sampler settings out of range."""
        if request.sampler is not None:
            check_choice("--sampler", request.sampler, SAMPLERS)
        if request.steps is not None and not 1 <= request.steps <= self.m.T:
            raise AigcError(f"--steps must be in 1..{self.m.T} (the model's T), got {request.steps}")
        if request.guidance is not None and not request.guidance >= 0:
            raise AigcError(f"--guidance must be >= 0 (1 = plain conditional, 0 = unconditional), "
                            f"got {request.guidance}")

    def denoiser(self, c, guidance: float):
        if c is None:
            return lambda x, t: self.sampling_net(x, t, None)
        return guided(self.sampling_net, c, self.net.null_condition(len(c), c.device), guidance)

    def sample(self, n: int, c, sampler=None, steps=None, guidance=None, generator=None, callback=None, x_T=None):
        """n samples in [0, 1] (from x_T when given)."""
        m = self.m
        sampler = sampler or m.sampler
        steps = steps or (m.sample_steps if sampler in FEW_STEP else None)
        w = m.guidance if guidance is None else guidance
        out = run_sampler(sampler, self.denoiser(c, w), self.schedule, (n, *self.shape), steps, eta=m.eta,
                          generator=generator, device=self.device(), clip=m.clip, callback=callback,
                          noise=self.noise, x_T=x_T)
        return ((out + 1) / 2).clamp(0, 1)

    def trajectory(self, n: int, c, generator=None, sampler=None, steps=None, guidance=None,
                   snapshots: int = TRAJECTORY_SNAPSHOTS) -> torch.Tensor:
        """Rows of x_T -> x_0: each row one sample, `snapshots` + 1 images of x_t in [0, 1]."""
        x_T = self.noise((n, *self.shape), generator, self.device(), torch.float32)
        kept, when = [x_T], set()

        def keep(i, total, x):
            if i == 0:
                when.update(torch.linspace(0, total - 1, snapshots).round().long().tolist())
            if i in when:
                kept.append(x.clone())

        self.sample(n, c, sampler, steps, guidance, generator, callback=keep, x_T=x_T)
        return torch.stack([(x.clamp(-1, 1) + 1) / 2 for x in kept], 1).flatten(0, 1)

    def sample_for(self, labels=None, prompts=None, num=None, sampler=None, steps=None, guidance=None,
                   progress=None, on_step=None) -> torch.Tensor:
        """Samples in [0, 1], one per label or prompt (or `num` of an unconditional model), in chunks sized
        so that the net's batch stays at sample_batch when guidance runs the cond and null inputs together
        (on CPU a doubled batch cost 3.2x per call once its activations outgrew the caches)."""
        c = self.cond_for(labels, prompts)
        n = len(c) if c is not None else num
        w = self.m.guidance if guidance is None else guidance
        per = self.sample_batch if c is None else max(1, self.sample_batch // inputs_per_sample(w))
        chunks, starts = [], range(0, n, per)
        for k, i in enumerate(starts):
            j = min(n, i + per)
            callback = None if on_step is None else \
                (lambda s, total, x, k=k: on_step(k * total + s + 1, len(starts) * total))
            chunks.append(self.sample(j - i, c[i:j] if c is not None else None, sampler, steps, guidance,
                                      callback=callback))
            if progress:
                progress(j - i)
        return torch.cat(chunks)


class DiffusionRecipe(ImageRecipe):
    family = "diffusion"
    ModelConfig = DiffusionConfig
    WHATS = ("samples", "trajectory")

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
        self.net = channels_last_convs(UNet(cfg.model, shape))
        self.modules = {"unet": self.net}
        self.core = DiffusionCore(cfg.model, self.net, shape)
        self.vocab = self.core.vocab

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        check_diffusion_config(cfg.model)
        check_choice("model.cond", cfg.model.cond, ("none", "class", "text"))

    @staticmethod
    def load_data(cfg, run_dir: Path | None = None):
        data = ImageRecipe.load_data(cfg, run_dir)
        check_unet_size(cfg, "image")
        ImageRecipe.set_condition(cfg, data)
        return data

    # ---------------------------------------------------------------- trainer hooks
    def param_groups(self):
        return {"unet": list(self.net.parameters())}

    def ema_modules(self):
        return self.modules

    def train_step(self, batch, opt):
        return self.core.train_step(batch, "image", opt)

    def evaluate(self, data, max_batches=None, num=None) -> dict[str, float]:
        return self.core.evaluate(data, max_batches, num)

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
        c = self.core.cond_for(labels, prompts)
        save_grid(path, self.core.sample(n, c, generator=g), nrow=8)
        sel = torch.arange(0, n, max(1, n // 8))[:8]
        strip = self.core.trajectory(len(sel), c[sel] if c is not None else None, torch.Generator().manual_seed(99))
        save_grid(Path(path).with_name(Path(path).stem + "_trajectory.png"), strip, nrow=len(strip) // len(sel))

    # ---------------------------------------------------------------- generation
    def accepts(self) -> set[str]:
        return self.core.accepts() | self.condition_fields()

    def generate(self, request, stream=None, progress=None):
        self.core.check_request(request)
        self.check_condition_args(request.label, request.prompt)
        r = request
        if r.what == "trajectory":
            num = r.num or 8
            req = self.requested_conditions(num, r.label, r.prompt)
            c = self.core.cond_for(req.get("labels"), req.get("prompts"))
            strip = self.core.trajectory(num, c, None, r.sampler, r.steps, r.guidance)
            return self.result(strip, nrow=TRAJECTORY_SNAPSHOTS + 1)
        num = r.num or DEFAULT_NUM[self.output]
        out = self.requested_conditions(num, r.label, r.prompt)
        images = self.core.sample_for(out.get("labels"), out.get("prompts"), num, r.sampler, r.steps, r.guidance,
                                      on_step=progress)
        return self.result(images, out.get("labels"), out.get("prompts"))

    def generate_for_eval(self, data, num: int, sampler=None, steps=None, guidance=None, progress=None):
        """`num` samples for the sample-quality metrics (conditions from `eval_conditions`)."""
        labels, prompts = self.eval_conditions(data, num)
        images = self.core.sample_for(labels, prompts, num, sampler, steps, guidance, progress)
        return self.result(images, labels, prompts)

    def full_eval(self, data, num=None, k=None, progress=None) -> dict:
        """The denoising loss on the eval split (fixed timesteps and noise); sample quality follows."""
        return {**self.evaluate(data, num=num), **self.core.summary()}
