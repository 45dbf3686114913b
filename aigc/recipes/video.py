"""Video recipes: the 3D-convolutional video GAN with a frame-difference discriminator (`video-gan`) and
video diffusion with a factorised space-time U-Net (`video-diffusion`). Both train on clips from
aigc/data/video.py, condition on moving-shapes captions, and share the image families' machinery: the
GAN losses, stabilisers and update order of recipes/gan.py, and the diffusion schedule, samplers and
classifier-free guidance of aigc/diffusion (the video denoiser is just another `fn(x_t, t)`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from aigc.config import RunConfig
from aigc.diffusion.samplers import frame_noise
from aigc.errors import AigcError, check_choice
from aigc.generation import DEFAULT_NUM, video_result
from aigc.models.text_encoder import caption_vocab
from aigc.models.unet import UNet, VideoUNetConfig
from aigc.models.video import (
    VideoDiscriminator,
    VideoGANConfig,
    frame_differences,
    spatial_doublings,
    video_generator,
)
from aigc.recipes.base import VideoRecipe
from aigc.recipes.diffusion import (
    DiffusionConfig,
    DiffusionCore,
    channels_last_convs,
    check_diffusion_config,
    check_unet_size,
)
from aigc.recipes.gan import LOSSES, Adversarial, word_loss
from aigc.train.dist import draw_rows

SAMPLE_CLIPS = 16                        # clips in the training-time sample GIF
COLLAPSE = 0.25                          # sample spread for one caption below this share of the real batch's
COLLAPSE_CHECKS = 2                      # ... at this many checks in a row: the collapse warning


@dataclass
class VideoTrainingConfig:
    """How video diffusion trains on and samples clips (see VideoDiffusionRecipe)."""
    joint_images: int = 0            # of each batch of clips, how many are cut to one random frame each and
                                     # trained as 1-frame clips (joint image-video training)
    train_frames: int = 0            # train on random windows of this many consecutive frames (0 = whole clips)
    window_start0: float = 0.0       # share of the training windows that start at frame 0
    noise_corr: float = 0.0          # correlation of the noise between a clip's frames (0 = i.i.d.)
    sample_window: int = 0           # sampling: denoise half-overlapping windows of this many frames (0 = whole clip)


@dataclass
class VideoDiffusionConfig(VideoTrainingConfig, VideoUNetConfig, DiffusionConfig):
    """[model] of video-diffusion: DiffusionConfig plus the temporal layers and the clip training options."""
    REMOVED: ClassVar[dict] = {"emb_act": False}


def _check_cond(cond: str) -> None:
    check_choice("model.cond", cond, ("none", "text"), " for video")


class VideoGANRecipe(Adversarial, VideoRecipe):
    """The video GAN (models/video.py): D is a set of discriminators ("heads": the clip, frame differences,
    single frames), each with its weight in both losses; G's loss may add the mode-seeking term and the
    frame-difference moments. The collapse detector: at step 1 (logged only: an untrained G) and every
    `collapse_every` steps, 8 samples for each of 4 captions of the batch (fixed noise, G in eval mode); their
    pixel spread per caption over the real batch's spread is logged as `diversity` (a collapsed G, whose z does
    nothing, gives about 0; the value is held between readings), with a warning when it stays under COLLAPSE.
    D winning completely is watched as in the image GAN."""
    family = "video-gan"
    ModelConfig = VideoGANConfig

    def __init__(self, cfg: RunConfig):
        m = cfg.model
        self.shape = self.video_shape(cfg)
        self._pair(cfg, video_generator(m, self.shape), VideoDiscriminator(m, self.shape))
        self.vocab = caption_vocab(m) if m.cond == "text" else None
        self.heads = {"clip": 1.0, "diff": m.frame_diff, "image": m.image_d, "crop": m.crop_d}
        self._diversity, self._low = None, 0

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        check_choice("model.loss", m.loss, LOSSES)
        check_choice("model.g_arch", m.g_arch, ("tgan", "motion", "sprite"))
        check_choice("model.sprite_where", m.sprite_where, ("map", "point", "line", "argmax", "argmax_line"))
        check_choice("model.frame_diff_mode", m.frame_diff_mode, ("d", "moments"))
        _check_cond(m.cond)
        if min(m.z_dim, m.g_width, m.d_width, m.cond_dim, m.r1_every, m.d_steps, m.motion_dim, m.image_frames,
               m.mode_seeking_pool) < 1:
            raise AigcError("model.z_dim, g_width, d_width, cond_dim, r1_every, d_steps, motion_dim, image_frames "
                            "and mode_seeking_pool must be positive")
        if m.g_arch == "sprite":
            try:
                spatial_doublings(m.sprite_px)
            except ValueError:
                raise AigcError(f"model.sprite_px is the side of the sprite's canvas: 8, 16, 32 ..., not "
                                f"{m.sprite_px}") from None
        if m.crop_px not in (16, 32):
            raise AigcError(f"model.crop_px is the side of the object discriminator's window: 16 or 32, not "
                            f"{m.crop_px}")
        if m.g_frame_kernel < 1 or m.g_frame_kernel % 2 == 0:
            raise AigcError(f"model.g_frame_kernel is the frames each upsampling layer of G mixes: an odd number >= 1 "
                            f"(3 as in the material, 1 for one frame at a time), not {m.g_frame_kernel}")
        if min(m.r1, m.frame_diff, m.lr_g, m.lr_d, m.image_d, m.crop_d, m.image_d_width, m.image_d_convs,
               m.mode_seeking, m.collapse_every, m.aux_words, m.image_words, m.crop_words, m.mismatch) < 0:
            raise AigcError("model.r1, frame_diff, lr_g, lr_d, image_d, crop_d, image_d_width (0 = d_width), "
                            "image_d_convs, mode_seeking, collapse_every, aux_words, image_words, crop_words and "
                            "mismatch must be >= 0")

    @staticmethod
    def load_data(cfg, run_dir: Path | None = None):
        data = VideoRecipe.load_data(cfg, run_dir)
        try:
            spatial_doublings(cfg.data.image_size)
        except ValueError as e:
            raise AigcError(str(e)) from None
        if cfg.model.image_d > 0 and cfg.data.image_size not in (32, 64):
            raise AigcError(f"model.image_d uses the image GAN's discriminator, which reads 32 or 64 px frames, not "
                            f"{cfg.data.image_size} px: set model.image_d=0 or data.image_size=32")
        VideoRecipe.set_condition(cfg, data)
        return data

    # ---------------------------------------------------------------- losses over the discriminators
    def adversarial(self, fn, *logits: dict) -> torch.Tensor:
        """sum over the discriminators h of weight_h * fn(logits_h ...)."""
        return sum(self.heads[h] * fn(*(d[h] for d in logits)) for h in logits[0] if h in self.heads)

    def words(self, logits: dict, y, named: bool = True) -> torch.Tensor:
        """The caption-word classifiers' losses: aux_words x the clip discriminator's, image_words x the image
        discriminator's and crop_words x the object discriminator's (each frame against its clip's caption);
        named = False: against no word (generated clips with `words_fake`). See recipes/gan.word_loss."""
        m, loss = self.cfg.model, torch.zeros(())
        if y is None:
            return loss
        if "words" in logits:
            loss = loss + m.aux_words * word_loss(logits["words"], y, named)
        for key, weight in (("image_words", m.image_words), ("crop_words", m.crop_words)):
            if key in logits:
                k = len(logits[key]) // len(y)
                loss = loss + weight * word_loss(logits[key], y.repeat_interleave(k, 0), named)
        return loss

    # ---------------------------------------------------------------- trainer hooks
    def _y(self, captions):
        return self.vocab.encode(captions).to(self.device_of()) if self.vocab is not None else None

    def _z(self, n: int, generator=None) -> torch.Tensor:
        return draw_rows(lambda shape: torch.randn(shape, generator=generator), (n, self.cfg.model.z_dim)).to(
            self.device_of())

    def train_step(self, batch, opt):
        m = self.cfg.model
        x = batch["video"] * 2 - 1
        y = self._y(batch.get("caption"))
        self._step += 1
        for _ in range(m.d_steps):
            with torch.no_grad():
                fake = self.G(self._z(len(x)), y)
            loss, pen, r, f = self.d_update(x, fake, y, opt)
            out = self.d_stats(loss, r["clip"], f["clip"])
            if pen is not None:
                out["r1"] = pen.detach()
            for h in ("diff", "image", "crop"):
                if h in r:
                    out[f"d_{h}_real"] = torch.sigmoid(r[h].detach()).mean()
                    out[f"d_{h}_fake"] = torch.sigmoid(f[h].detach()).mean()
        extra = None
        if m.frame_diff > 0 and m.frame_diff_mode == "moments":
            real = frame_differences(x).abs().mean((0, 1, 3, 4))                 # per frame pair, (T - 1,)
            extra = lambda fake: m.frame_diff * (frame_differences(fake).abs().mean((0, 1, 3, 4))  # noqa: E731
                                                 - real).abs().mean()
        out["g_loss"] = self.g_step_on(self._z(len(x)), y, opt, extra)
        self._watch(float(out["d_real"]), float(out["d_fake"]))
        if m.collapse_every and (self._step == 1 or self._step % m.collapse_every == 0):
            self._check_diversity(x, y)
        if self._diversity is not None:
            out["diversity"] = self._diversity
        return out

    def _check_diversity(self, x: torch.Tensor, y) -> None:
        """The collapse detector (see the class docstring)."""
        g = torch.Generator().manual_seed(99)
        rows = torch.arange(min(4, len(x))).repeat_interleave(8)
        was = self.G.training
        self.G.eval()
        try:
            with torch.no_grad():
                fake = self.G(self._z(len(rows), g), None if y is None else y[rows.to(y.device)])
        finally:
            self.G.train(was)
        spread = fake.view(-1, 8, *fake.shape[1:]).std(1).mean()
        self._diversity = round(float(spread / x.std(0).mean().clamp(min=1e-6)), 4)
        if self._step < self.cfg.model.collapse_every:       # the untrained G's reading: logged, not judged
            return
        self._low = self._low + 1 if self._diversity < COLLAPSE else 0
        if self._low == COLLAPSE_CHECKS:
            print(f"\nwarning: mode collapse at step {self._step}: samples for one caption spread "
                  f"{self._diversity:.2f} of the real clips' spread ({COLLAPSE_CHECKS} checks in a row under "
                  f"{COLLAPSE}): the generator ignores its noise. Raise model.mode_seeking (0.3 and 1 kept every "
                  f"measured run apart; 0 collapsed them) or lower train.lr.", file=sys.stderr)

    def evaluate(self, data, max_batches=None) -> dict[str, float]:
        """The discriminators' mean outputs on held-out real clips and on fresh samples (a health check)."""
        sums, n = {}, 0
        limit = None if max_batches is None else max_batches * 50
        for batch in data.eval_batches(50, limit):
            x = batch["video"].to(self.device_of()) * 2 - 1
            y = self._y(batch.get("caption"))
            for kind, logits in (("real", self.D(x, y)), ("fake", self.D(self.G(self._z(len(x)), y), y))):
                for h, v in ((h, v) for h, v in logits.items() if h in self.heads):
                    key = f"eval_d{'' if h == 'clip' else '_' + h}_{kind}"
                    sums[key] = sums.get(key, 0.0) + torch.sigmoid(v).view(len(x), -1).mean(1).sum().item()
            n += len(x)
        return {k: round(v / max(n, 1), 4) for k, v in sums.items()}

    def save_samples(self, path: Path) -> None:
        g = torch.Generator().manual_seed(1234)
        prompts = self.random_prompts(SAMPLE_CLIPS, g) if self.cfg.model.cond == "text" else None
        self.save_clips(path, self._clips(self._z(SAMPLE_CLIPS, g), self._y(prompts)))

    # ---------------------------------------------------------------- sampling and evaluation
    def _clips(self, z, y=None) -> torch.Tensor:
        return (self.G(z, y).float() + 1).mul_(0.5).clamp_(0, 1)

    def accepts(self) -> set[str]:
        return {"frames"} | self.condition_fields()

    def generate(self, request, stream=None, progress=None):
        self.check_condition_args(request.label, request.prompt)
        self.check_frames(request.frames)
        num = request.num or DEFAULT_NUM["video"]
        prompts = self.requested_conditions(num, request.label, request.prompt).get("prompts")
        return video_result(self.clips_for(prompts, num), prompts)

    def clips_for(self, prompts=None, num=None, batch: int = 250) -> torch.Tensor:
        n = len(prompts) if prompts is not None else num
        return torch.cat([self._clips(self._z(min(n, i + batch) - i),
                                      self._y(prompts[i:i + batch] if prompts else None))
                          for i in range(0, n, batch)])

    def generate_for_eval(self, data, num: int):
        _, prompts = self.eval_conditions(data, num)
        return video_result(self.clips_for(prompts, num), prompts)

    def full_eval(self, data, num=None, k=None, progress=None) -> dict:
        return {**self.evaluate(data), "note": "GANs define no likelihood; see sample_quality"}


def window_starts(frames: int, window: int) -> list[int]:
    """First frames of half-overlapping windows of `window` frames covering 0..frames-1 (the last one ends at
    the clip's end): 16 frames in windows of 8 -> [0, 4, 8]."""
    if not 0 < window < frames:
        return [0]
    starts = list(range(0, frames - window + 1, max(1, window // 2)))
    return starts if starts[-1] == frames - window else starts + [frames - window]


def windowed(net, frames: int, window: int):
    """A denoiser net(x, t, c) of whole clips (B, C, frames, H, W) that runs `net` on half-overlapping windows
    of `window` frames, each with its frames' indices in the clip, and averages the predictions where windows
    overlap (temporal co-denoising, as MultiDiffusion (Bar-Tal et al. 2023) does for image tiles). A model
    trained on windows (model.train_frames) then samples only what it was trained on: its temporal attention
    never sees frames further apart than a window. The windows go through the net as one batch."""
    starts = window_starts(frames, window)
    if len(starts) == 1:
        return net
    index = torch.tensor(starts)[:, None] + torch.arange(window)                  # (windows, window)
    count = torch.zeros(frames)
    for s in starts:
        count[s:s + window] += 1

    def fn(x, t, c=None):
        b, n = len(x), len(starts)
        out = net(torch.cat([x[:, :, s:s + window] for s in starts]), t.repeat(n),
                  c.repeat(n, *[1] * (c.dim() - 1)) if c is not None else None,
                  index.to(x.device).repeat_interleave(b, 0))
        acc = torch.zeros_like(x)
        for j, s in enumerate(starts):
            acc[:, :, s:s + window] += out[j * b:(j + 1) * b]
        return acc / count.to(x.device, x.dtype).view(1, 1, frames, 1, 1)

    return fn


class VideoDiffusionRecipe(VideoRecipe):
    """DDPM on clips: the diffusion core (recipes/diffusion.py) with a space-time U-Net (models/unet.py, frames > 0).

    Joint image-video training (`model.joint_images` = k, Ho et al. 2022, sec. 3): of each batch of clips, k
    are cut to one random frame each and trained as 1-frame clips, on which the temporal layers see no other
    frame (temporal attention attends to the frame itself, the temporal convolution sees zero padding, as at
    a clip's ends). Consecutive frames of a clip are near copies, so the spatial layers learn from few
    distinct images per step; the cut frames give them k more at 1/T of a clip's cost. The loss is the mean
    over all frames of the batch, clip frames and cut frames alike.

    Windows (`model.train_frames` = k): each clip trains as a random window of k consecutive frames (the whole
    clip when it is not longer), and the frame-index embedding gets the frames' indices in the whole clip, so
    every index is seen in training and sampling still makes whole clips. Per step, B clips of k frames cost
    as much as B k / T whole clips. `model.window_start0` = p makes a share p of the windows start at frame 0:
    only there does the caption's direction fix the sign of the motion (the shape has not bounced yet).
    `model.sample_window` = k samples as the model trained: every denoising step runs half-overlapping windows
    of k frames and averages them (`windowed`)."""
    family = "video-diffusion"
    ModelConfig = VideoDiffusionConfig

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        m = cfg.model
        c, t, h, w = self.video_shape(cfg)
        self.net = channels_last_convs(UNet(m, (c, h, w), frames=t))
        self.modules = {"unet": self.net}
        self.core = DiffusionCore(m, self.net, (c, t, h, w), frame_noise(m.noise_corr),
                                  windowed(self.net, t, m.sample_window), sample_batch=32)
        self.vocab = self.core.vocab

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        m = cfg.model
        check_diffusion_config(m)
        _check_cond(m.cond)
        if not 0 <= m.noise_corr < 1:
            raise AigcError(f"model.noise_corr must be in [0, 1) (the noise correlation between frames), "
                            f"got {m.noise_corr}")
        if m.train_frames < 0:
            raise AigcError(f"model.train_frames must be >= 0: the length of the windows cut from each clip "
                            f"(0 = whole clips); got {m.train_frames}")
        if not 0 <= m.joint_images < cfg.data.batch_size:
            raise AigcError(f"model.joint_images must be in 0..data.batch_size - 1 ({cfg.data.batch_size - 1}): "
                            f"at least one clip of each batch trains as a clip; got {m.joint_images}")
        if not 0 <= m.window_start0 <= 1:
            raise AigcError(f"model.window_start0 is the share of training windows that start at frame 0, in [0, 1]; "
                            f"got {m.window_start0}")
        if m.sample_window < 0:
            raise AigcError(f"model.sample_window must be >= 0: the frames of each denoising window at sampling "
                            f"(0 = the whole clip at once); got {m.sample_window}")
        if m.frame_map and not (m.cond_map > 0 and m.cond != "none"):
            raise AigcError("model.frame_map makes the caption map differ per frame: it needs a condition "
                            f"(model.cond) and model.cond_map > 0; got cond = {m.cond!r}, cond_map = {m.cond_map}")
        check_choice("model.temporal_conv", m.temporal_conv, ("1d", "separated", "dynamic"))
        check_choice("model.spacetime_attention", m.spacetime_attention, ("none", "mid", "all"))
        check_choice("model.temporal_pos", m.temporal_pos, ("none", "relative"))

    @staticmethod
    def load_data(cfg, run_dir: Path | None = None):
        data = VideoRecipe.load_data(cfg, run_dir)
        check_unet_size(cfg, "frame")
        VideoRecipe.set_condition(cfg, data)
        return data

    @staticmethod
    def window(cfg) -> int:
        """The frames each clip trains on: model.train_frames, or the whole clip (0, or not shorter)."""
        k, t = cfg.model.train_frames, cfg.data.frames
        return min(k, t) if k else t

    @staticmethod
    def frames_per_step(cfg) -> int:
        j = cfg.model.joint_images
        return (cfg.data.batch_size - j) * VideoDiffusionRecipe.window(cfg) + j

    # ---------------------------------------------------------------- trainer hooks
    def param_groups(self):
        return {"unet": list(self.net.parameters())}

    def ema_modules(self):
        return self.modules

    def evaluate(self, data, max_batches=None, num=None) -> dict[str, float]:
        return self.core.evaluate(data, max_batches, num)

    def train_step(self, batch, opt):
        m, core = self.cfg.model, self.core
        if not (m.joint_images or m.train_frames):
            return core.train_step(batch, "video", opt)
        x0 = batch["video"].to(core.device()) * 2 - 1
        c = core.condition(batch, m.p_uncond)
        part = lambda a, b: c[a:b] if c is not None else None                     # noqa: E731
        T, n, k = x0.shape[2], len(x0) - m.joint_images, self.window(self.cfg)
        first = torch.randint(T - k + 1, (n,))                                     # windows of k frames
        if m.window_start0:
            first = first.masked_fill(torch.rand(n) < m.window_start0, 0)
        index = first[:, None] + torch.arange(k)
        clips = torch.stack([x0[i, :, f:f + k] for i, f in enumerate(first.tolist())])
        clip_loss = core.loss(clips, part(0, n), weighted=True, frame_index=index)
        out, loss = {"clip_loss": clip_loss.mean().detach()}, clip_loss.sum() * k
        if m.joint_images:                                                        # one frame of each other clip
            pick = torch.randint(T, (m.joint_images,))
            frames = x0[n:][torch.arange(m.joint_images), :, pick].unsqueeze(2)   # (j, C, 1, H, W)
            image_loss = core.loss(frames, part(n, None), weighted=True)
            out["image_loss"] = image_loss.mean().detach()
            loss = loss + image_loss.sum()
        loss = loss / (n * k + m.joint_images)
        opt.update("unet", loss)
        return {"loss": loss.detach(), **out}

    def save_samples(self, path: Path) -> None:
        g = torch.Generator().manual_seed(1234)
        prompts = self.random_prompts(SAMPLE_CLIPS, g) if self.cfg.model.cond == "text" else None
        self.save_clips(path, self.core.sample(SAMPLE_CLIPS, self.core.cond_for(None, prompts), generator=g))

    # ---------------------------------------------------------------- generation
    def accepts(self) -> set[str]:
        return self.core.accepts() | {"frames"} | self.condition_fields()

    def generate(self, request, stream=None, progress=None):
        self.core.check_request(request)
        self.check_condition_args(request.label, request.prompt)
        self.check_frames(request.frames)
        num = request.num or DEFAULT_NUM["video"]
        prompts = self.requested_conditions(num, request.label, request.prompt).get("prompts")
        clips = self.core.sample_for(None, prompts, num, request.sampler, request.steps, request.guidance,
                                     on_step=progress)
        return video_result(clips, prompts)

    def generate_for_eval(self, data, num: int, sampler=None, steps=None, guidance=None, progress=None):
        _, prompts = self.eval_conditions(data, num)
        return video_result(self.core.sample_for(None, prompts, num, sampler, steps, guidance, progress), prompts)

    def full_eval(self, data, num=None, k=None, progress=None) -> dict:
        return {**self.evaluate(data, num=num), **self.core.summary()}
