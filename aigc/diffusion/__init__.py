"""Diffusion maths as plain code (no nn.Module): noise schedules, the forward process, DDPM, DDIM and
DPM-Solver++(2M) samplers and classifier-free guidance. A sampler takes a *denoiser* `fn(x_t, t) -> model output`
(t an int64 tensor of timesteps) and knows nothing of the network behind it, so the image and video
families share it."""

from aigc.diffusion.guidance import guided, inputs_per_sample
from aigc.diffusion.samplers import ddim_sample, ddpm_sample, dpm_solver_sample, sample, timesteps
from aigc.diffusion.schedule import Schedule

__all__ = ["Schedule", "ddpm_sample", "ddim_sample", "dpm_solver_sample", "sample", "timesteps", "guided",
           "inputs_per_sample"]
