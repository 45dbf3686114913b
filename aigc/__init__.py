"""aigc: generative models from scratch — train, evaluate, sample, serve."""

__version__ = "0.1.0"
