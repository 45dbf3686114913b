"""What recipes share: how a family loads its data, batches it and keeps run artifacts.

Image families inherit `ImageRecipe` (uint8 image datasets, the image Batcher); language models
override these with token data (recipes/gpt.py)."""

from __future__ import annotations

from pathlib import Path

import torch


class ImageRecipe:
    output = "images"                    # what `aigc sample` writes: images (png/npz) or text

    @staticmethod
    def load_data(cfg, run_dir: Path | None = None):
        """Load the dataset and write its resolved image shape into the config (to rebuild the model)."""
        from aigc.data import DATASETS, load_dataset
        from aigc.errors import AigcError

        if cfg.data.name in ("text", "code", "sft"):
            raise AigcError(f"the {cfg.family} family trains on images ({', '.join(DATASETS)}), not '{cfg.data.name}'")
        data = load_dataset(cfg.data)
        c, h, _ = data.image_shape
        cfg.data.channels, cfg.data.image_size = c, h
        return data

    @staticmethod
    def make_batcher(data, cfg):
        from aigc.data import Batcher

        return Batcher(data, cfg.data.batch_size, cfg.train.seed)

    def save_artifacts(self, run_dir: Path, data) -> None:
        """Files beside the checkpoint that sampling needs (none for image models)."""

    def load_artifacts(self, run_dir: Path) -> None:
        pass

    def device_of(self) -> torch.device:
        return next(iter(self.modules.values())).parameters().__next__().device
