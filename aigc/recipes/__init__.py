"""One recipe per model family: builds the model(s) from a config, says what a training step is,
evaluates and samples. The registry maps family names to recipe classes (imported lazily)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from aigc.config import (
    RunConfig,
    TrainConfig,
    apply_dict,
    apply_sets,
    check_train_config,
    data_config,
    load_run_config,
    preset_path,
    read_toml,
)
from aigc.errors import AigcError, did_you_mean
from aigc.io import checkpoint as ckpt
from aigc.io.rundir import CHECKPOINT, CONFIG

FAMILIES = {"vae": "aigc.recipes.vae:VAERecipe", "gpt": "aigc.recipes.gpt:GPTRecipe",
            "gan": "aigc.recipes.gan:GANRecipe", "text-gan": "aigc.recipes.text_gan:TextGANRecipe",
            "diffusion": "aigc.recipes.diffusion:DiffusionRecipe",
            "video-gan": "aigc.recipes.video:VideoGANRecipe",
            "video-diffusion": "aigc.recipes.video:VideoDiffusionRecipe",
            "captioner": "aigc.recipes.captioner:CaptionerRecipe", "tts": "aigc.recipes.tts:TTSRecipe"}


def recipe_class(family: str):
    if family not in FAMILIES:
        raise AigcError(f"unknown family '{family}'{did_you_mean(family, FAMILIES)}")
    module, cls = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), cls)


def build_config(family: str, dataset: str, config_file: str | None, sets: list[str], flags: dict) -> RunConfig:
    """Defaults < preset configs/FAMILY-DATASET.toml (if no --config) < --config < flags < --set."""
    cls = recipe_class(family)
    cfg = RunConfig(family, data_config(dataset), cls.ModelConfig(), TrainConfig())
    if config_file:
        apply_dict(cfg, read_toml(Path(config_file)), config_file)
    elif preset_path(family, dataset).is_file():
        apply_dict(cfg, read_toml(preset_path(family, dataset)), f"preset {preset_path(family, dataset).name}")
    cfg.data.name = dataset
    for dotted, value in flags.items():
        if value is not None:
            section, key = dotted.split(".")
            setattr(getattr(cfg, section), key, value)
    apply_sets(cfg, sets)
    check_train_config(cfg.train)
    cls.check_config(cfg)
    return cfg


def open_run(run_dir: Path, device: torch.device, ema: bool = True):
    """Rebuild a trained recipe from RUN/config.toml and its checkpoint (EMA weights when present
    and asked for). Returns (cfg, recipe) with modules in eval mode on `device`."""
    run_dir = Path(run_dir)
    family = read_toml(run_dir / CONFIG).get("family", "?")
    cls = recipe_class(family)
    cfg = load_run_config(run_dir / CONFIG, cls.ModelConfig)
    recipe = cls(cfg)
    recipe.load_artifacts(run_dir)
    ckpt.load_modules(recipe.modules, run_dir / CHECKPOINT, ema=ema)
    for m in recipe.modules.values():
        m.to(device).eval()
    recipe.device = device
    return cfg, recipe
