from aigc.train.trainer import NonFiniteLoss, Optimizers, Trainer, TrainerHooks, pick_device

__all__ = ["Trainer", "TrainerHooks", "Optimizers", "NonFiniteLoss", "pick_device"]
