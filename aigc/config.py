"""Run configuration: typed dataclass sections, TOML files and `--set key=value` overrides.

A run's config has three sections, each a dataclass with defaults:
    [data]   the dataset's own  (a DataConfig subclass in its aigc/data module)
    [model]  the family's own   (recipes/<family>.py)
    [train]  TrainConfig        (the generic trainer)
Precedence, lowest first: dataclass defaults < preset configs/FAMILY-DATASET.toml < --config FILE
< command-line flags (--steps, --seed, ...) < --set key=value. Unknown keys and wrong types are
user errors that list what is valid."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
import tomli_w

from aigc.errors import AigcError, did_you_mean

PRESET_DIR = Path(__file__).parent / "configs"
SECTIONS = ("data", "model", "train")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass
class DataConfig:
    """Options every dataset has; each dataset adds its own in a subclass (aigc/data: the registry)."""
    name: str = "mnist"
    dir: str = ""                    # --data-dir: folder or file with the data
    batch_size: int = 128


# Keys of the one flat [data] section that runs made by aigc 0.1 saved for every dataset; on loading such
# a run, those its dataset has no use for are dropped (they never did anything there).
LEGACY_DATA_KEYS = ("image_size", "channels", "binarize", "num_train", "num_eval", "frames", "digits", "holdout",
                    "caption_dropout", "val_fraction", "download", "tokenizer", "vocab_size", "encoding_errors",
                    "max_chars")


def data_config(name: str, **values) -> DataConfig:
    """The config of dataset `name` with its defaults, `values` set."""
    from aigc.data import config_class

    cfg = config_class(name)(name=name)
    update_dataclass(cfg, values, "data")
    return cfg


@dataclass
class TrainConfig:
    steps: int = 0                   # total optimiser steps (0 = use the time budget only)
    minutes: float = 0.0             # wall-clock budget (0 = use steps only)
    lr: float = 1e-3
    schedule: str = "cosine"         # cosine (decay over the budget) | constant (after warm-up)
    min_lr_ratio: float = 0.0        # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0           # max global grad norm (0 = off)
    ema: float = 0.0                 # EMA decay of the weights (0 = off), e.g. 0.999
    log_every: int = 50
    eval_every: int = 1000           # 0 = only at the end
    eval_batches: int = 20
    sample_every: int = 1000         # 0 = only at the end
    ckpt_every: int = 1000           # 0 = only at the end (and on interrupt)
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | mps
    amp: bool = True                 # bf16 autocast on CUDA (ignored on CPU)
    compile: str = "none"            # none | default | reduce-overhead (CUDA graphs) | max-autotune: torch.compile
                                     # each module's forward in this mode (on CPU it needs a C++ compiler)
    threads: int = 0                 # torch intra-op threads (0 = torch's default)


def check_train_config(t: TrainConfig) -> None:
    """Clear errors for trainer settings out of range (before any run folder is touched)."""
    from aigc.errors import check_choice

    if not t.lr > 0:
        raise AigcError(f"train.lr must be > 0, got {t.lr}")
    for name in ("steps", "minutes", "warmup_steps", "weight_decay", "grad_clip", "eval_every", "sample_every",
                 "ckpt_every", "threads"):
        if getattr(t, name) < 0:
            raise AigcError(f"train.{name} must be >= 0, got {getattr(t, name)}")
    for name in ("beta1", "beta2", "ema"):
        if not 0 <= getattr(t, name) < 1:
            raise AigcError(f"train.{name} must be in [0, 1), got {getattr(t, name)}")
    if not 0 <= t.min_lr_ratio <= 1:
        raise AigcError(f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
    if t.log_every < 1 or t.eval_batches < 1:
        raise AigcError("train.log_every and train.eval_batches must be at least 1")
    check_choice("train.schedule", t.schedule, ("cosine", "constant"))
    check_choice("train.compile", t.compile, COMPILE_MODES)


@dataclass
class RunConfig:
    family: str
    data: DataConfig
    model: Any
    train: TrainConfig

    def to_dict(self) -> dict:
        return {"family": self.family, **{s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}}

    def save(self, path: Path) -> None:
        path.write_text(tomli_w.dumps(self.to_dict()))


# ---------------------------------------------------------------- reading and merging

def read_toml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AigcError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise AigcError(f"{path} is not valid TOML: {e}") from None


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list"}.get(t, str(t))


def _coerce(value, t, where: str):
    """Check `value` against the field type `t`; ints are accepted for floats."""
    origin = getattr(t, "__origin__", t)
    ok = (
        (origin is bool and isinstance(value, bool))
        or (origin is int and isinstance(value, int) and not isinstance(value, bool))
        or (origin is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (origin is str and isinstance(value, str))
        or (origin is list and isinstance(value, list))
    )
    if not ok:
        raise AigcError(f"wrong type for {where}: expected {_type_name(origin)}, got {value!r}")
    if origin is float and not math.isfinite(value):
        raise AigcError(f"{where} must be a finite number, got {value!r}")
    return float(value) if origin is float else value


def update_dataclass(obj, values: dict, section: str):
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise AigcError(f"unknown config key '{section}.{key}'{did_you_mean(key, names)}")
        setattr(obj, key, _coerce(value, hints[key], f"{section}.{key}"))
    return obj


def apply_dict(cfg: RunConfig, d: dict, source: str) -> None:
    for key, value in d.items():
        if key == "family":
            if value != cfg.family:
                raise AigcError(f"{source} is for family '{value}', not '{cfg.family}'")
            continue
        if key not in SECTIONS or not isinstance(value, dict):
            raise AigcError(f"unknown config section '{key}' in {source}; valid: family, {', '.join(SECTIONS)}")
        update_dataclass(getattr(cfg, key), value, key)


def parse_set_value(text: str):
    """TOML value syntax (`3e-4`, `true`, `["a b"]`); a bare word that is not TOML is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def resolve_key(cfg: RunConfig, key: str) -> tuple[str, str]:
    """`section.name` as given, or a bare `name` found in exactly one section."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise AigcError(f"unknown config section '{section}' in --set {key}; valid: {', '.join(SECTIONS)}")
        return section, name
    owners = [s for s in SECTIONS if key in {f.name for f in fields(getattr(cfg, s))}]
    if not owners:
        every = sorted(f"{s}.{f.name}" for s in SECTIONS for f in fields(getattr(cfg, s)))
        raise AigcError(f"unknown config key '{key}'{did_you_mean(key, [e.split('.')[1] for e in every])}"
                        f"\nall keys: {', '.join(every)}")
    if len(owners) > 1:
        raise AigcError(f"'{key}' is ambiguous: say {' or '.join(f'{s}.{key}' for s in owners)}")
    return owners[0], key


def apply_sets(cfg: RunConfig, sets: list[str]) -> None:
    for item in sets:
        if "=" not in item:
            raise AigcError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        section, name = resolve_key(cfg, key.strip())
        update_dataclass(getattr(cfg, section), {name: parse_set_value(text.strip())}, section)


def preset_path(family: str, dataset: str) -> Path:
    return PRESET_DIR / f"{family}-{dataset}.toml"


def load_run_config(path: Path, model_config_cls) -> RunConfig:
    """Rebuild the RunConfig saved in a run directory. Runs of aigc 0.1 load too: their unused data keys
    are dropped, and so are model options since removed, when they hold the only value that still loads
    (`model_config_cls.REMOVED`); any other value is an error that names the version."""
    d = read_toml(path)
    data = dict(d.get("data", {}))
    cfg = RunConfig(d.get("family", "?"), data_config(data.get("name", "mnist")), model_config_cls(), TrainConfig())
    known = {f.name for f in fields(cfg.data)}
    d["data"] = {k: v for k, v in data.items() if k in known or k not in LEGACY_DATA_KEYS}
    model = dict(d.get("model", {}))
    for key, value in getattr(model_config_cls, "REMOVED", {}).items():
        old = model.pop(key, value)
        if old != value:
            raise AigcError(f"{path} was written by aigc 0.1 with model.{key} = {old!r}; aigc 0.2 removed that "
                            f"option, so this run cannot be rebuilt (retrain it, or sample it with aigc 0.1)")
    d["model"] = model
    apply_dict(cfg, d, str(path))
    return cfg
