"""``TrainConfig``: the options of a training run, validated when the object is made.

A field left ``None`` takes the dataset's default (MetaOptNet's protocol, see
:mod:`metasparse.engine.config`) in a new run, and the saved value when resuming.
:meth:`TrainConfig.run_config` resolves a new run's configuration (what ``config.json``
holds); :meth:`TrainConfig.resumed_run_config` checks the given fields against a saved one.
Error messages name each option by its command-line flag (``way`` is ``--way``).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from ..engine.checkpoint import atomic_write_text
from ..engine.config import LEGACY_SCHEDULE, TrainSettings, milestone_epochs
from ..errors import ConfigError
from ..registry import (DATASETS, DEFAULT_HEAD, backbone_entry, dataset_defaults, dataset_entry, head_entry,
                        head_options)

__all__ = ["TrainConfig", "read_config_file"]

PathLike = Union[str, Path]

# fields stored at the top of the run configuration that a resumed run must not change
_RUN_FIELDS = ("backbone", "head", "way", "train_shot", "query", "episodes_per_batch", "val_episodes",
               "val_shot", "val_query", "amp", "head_dtype")
# fields stored in the run configuration's ``settings`` (TrainSettings)
_SETTINGS_FIELDS = ("epochs", "batches_per_epoch", "optimizer", "lr", "weight_decay", "label_smoothing", "seed",
                    "checkpoint_every", "log_every")
# fields that only a new run may set
_NEW_RUN_FIELDS = ("lambda_ratio", "solver", "backbone_options", "head_options", "source_options")
_OPTION_DICTS = ("backbone_options", "head_options", "source_options")
_COUNTS = ("way", "train_shot", "query", "episodes_per_batch", "val_shot", "val_query")


def default_amp(backbone: str, device_type: Optional[str]) -> bool:
    """bf16 autocast of the backbone unless asked otherwise: on for an image backbone
    (ResNet-12, Conv4: convolutions, whose accuracy bf16 does not change, at several times
    the speed on tensor cores) trained on CUDA; off on the CPU (slow bf16) and for the MLP
    of vector data (the synthetic experiments compare representations closely)."""
    return device_type == "cuda" and backbone_entry(backbone).images


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """A meta-training run in ``out`` (``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``).

    Data: ``dataset`` (required for a new run; one of :data:`metasparse.registry.DATASETS`),
    ``data_root`` (not for ``synthetic``), ``source_options`` (keyword arguments of the
    synthetic source). Model: ``backbone`` / ``backbone_options``, ``head`` (default
    ``group-sparse-svm``) with ``lambda_ratio``, ``solver`` and ``head_options``, ``amp``
    (bf16 autocast of the backbone; None: on for an image backbone trained on CUDA, off
    otherwise, see :func:`default_amp`; the resolved value is recorded), ``head_dtype``.
    Episodes: ``way``, ``train_shot``, ``query``, ``episodes_per_batch``,
    ``val_episodes`` (0: no validation), ``val_shot``, ``val_query``. Optimisation:
    ``epochs``, ``batches_per_epoch``, ``optimizer``, ``lr``, ``weight_decay``,
    ``label_smoothing``, ``seed``, ``checkpoint_every``, ``log_every``, ``strict_solver``.
    Execution (not part of the run configuration): ``resume``, ``device``,
    ``num_workers``, ``augment_device`` ("auto": augmentation on the training device when it
    is CUDA; "cpu"), ``progress``, ``tensorboard``, ``sync_bn``, ``stop_after_steps``,
    ``compile`` (``torch.compile`` of the backbone).
    """

    out: PathLike
    dataset: Optional[str] = None
    data_root: Optional[PathLike] = None
    source_options: Optional[Dict[str, Any]] = None
    backbone: Optional[str] = None
    backbone_options: Optional[Dict[str, Any]] = None
    head: Optional[str] = None
    lambda_ratio: Optional[float] = None
    solver: Optional[str] = None
    head_options: Optional[Dict[str, Any]] = None
    way: Optional[int] = None
    train_shot: Optional[int] = None
    query: Optional[int] = None
    episodes_per_batch: Optional[int] = None
    val_episodes: Optional[int] = None
    val_shot: Optional[int] = None
    val_query: Optional[int] = None
    epochs: Optional[int] = None
    batches_per_epoch: Optional[int] = None
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    label_smoothing: Optional[float] = None
    seed: Optional[int] = None
    checkpoint_every: Optional[int] = None
    log_every: Optional[int] = None
    amp: Optional[bool] = None
    head_dtype: Optional[str] = None
    strict_solver: Optional[bool] = None
    resume: bool = False
    device: str = "auto"
    num_workers: int = 0
    augment_device: str = "auto"
    progress: bool = True
    tensorboard: bool = False
    sync_bn: bool = False
    stop_after_steps: Optional[int] = None
    compile: bool = False

    def __post_init__(self) -> None:
        if str(self.out).strip() == "":   # Path("") is the current directory
            raise ConfigError("--out '': expected a run directory")
        self.out = Path(self.out)
        if self.dataset is not None:   # the canonical name: MetaOptNet's miniImageNet is mini-imagenet
            self.dataset = dataset_entry(self.dataset).name
        for name in _OPTION_DICTS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{_flag(name)}: expected a dict of options, got {value!r}")
        if self.head is not None:
            self.head = head_entry(self.head).name
        if not self.resume:   # resuming rejects these options (the run's config.json holds them)
            head_options(self.head or DEFAULT_HEAD, self.lambda_ratio, self.solver)
        if self.backbone is not None:
            self.backbone = backbone_entry(self.backbone).name
        for name in _COUNTS:
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ConfigError(f"{_flag(name)} must be >= 1, got {value}")
        if self.way is not None and int(self.way) < 2:   # one class: nothing to classify (the heads need 2)
            raise ConfigError(f"--way must be >= 2 (a few-shot task tells classes apart), got {self.way}")
        if any(v is not None and v < 1 for v in (self.epochs, self.batches_per_epoch)):
            raise ConfigError("--epochs and --batches-per-epoch must be >= 1")
        if int(self.num_workers) < 0:
            raise ConfigError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.augment_device not in ("auto", "cpu"):
            raise ConfigError(f"--augment-device {self.augment_device!r}: expected one of ['auto', 'cpu']")
        if self.val_episodes is not None and self.val_episodes < 0:
            raise ConfigError(f"--val-episodes must be >= 0, got {self.val_episodes}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for name, choices in (("optimizer", ("sgd", "adam")), ("head_dtype", ("float32", "float64"))):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ConfigError(f"{_flag(name)} {value!r}: expected one of {list(choices)}")

    # ---------------------------------------------------------------- files
    @classmethod
    def from_file(cls, path: PathLike, **overrides: Any) -> "TrainConfig":
        """The configuration in ``path`` (JSON, or YAML for ``.yaml`` / ``.yml``; a run's
        ``config.json`` works too), with ``overrides`` (fields given by keyword, e.g. the
        command line's flags) taking precedence.  ``out`` must come from ``overrides``
        unless the file has it."""
        values = read_config_file(path)
        values.update({k: v for k, v in overrides.items()})
        if "out" not in values:
            raise ConfigError(f"{path}: no 'out'; give the run directory (--out)")
        return cls(**values)

    def to_file(self, path: PathLike) -> Path:
        """Write the fields that were given (not None, not the defaults of execution) to
        ``path`` (JSON, or YAML for ``.yaml`` / ``.yml``), atomically; :meth:`from_file`
        reads it back."""
        path = Path(path)
        data = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _NOT_IN_FILES or value is None or value == f.default:
                continue
            data[f.name] = str(value) if isinstance(value, Path) else value
        atomic_write_text(path, _dump(data, path))
        return path

    def run_config(self, device_type: Optional[str] = None) -> Dict[str, Any]:
        """The configuration of a new run: the dataset's defaults overridden by the given
        fields (JSON-able; training adds ``example_shape`` and ``n_features``); ``amp``
        left None resolves for ``device_type`` ("cuda", "cpu"; None: off) by
        :func:`default_amp`."""
        if self.dataset is None:
            raise ConfigError("--dataset is required (one of " + ", ".join(DATASETS) + ")")
        d = dataset_defaults(self.dataset)
        head = self.head or DEFAULT_HEAD
        cfg: Dict[str, Any] = {
            "dataset": self.dataset, "data_root": str(self.data_root) if self.data_root else None,
            "source_options": dict(self.source_options or {}),
            "backbone": self.backbone or d["backbone"],
            "head": head,
            "head_options": head_options(head, self.lambda_ratio, self.solver, self.head_options),
        }
        for name in ("way", "train_shot", "query", "episodes_per_batch", "val_episodes", "val_shot", "val_query"):
            cfg[name] = d[name] if getattr(self, name) is None else getattr(self, name)
        cfg.update({"test_query": d["test_query"], "test_episodes": d["test_episodes"],
                    "amp": default_amp(cfg["backbone"], device_type) if self.amp is None else bool(self.amp),
                    "head_dtype": self.head_dtype or "float32"})
        defaults = d["backbone_options"] if cfg["backbone"] == d["backbone"] else {}
        cfg["backbone_options"] = {**defaults, **(self.backbone_options or {})}
        s = TrainSettings(epochs=d["epochs"], batches_per_epoch=d["batches_per_epoch"], optimizer=d["optimizer"],
                          lr=d["lr"], weight_decay=d["weight_decay"], label_smoothing=d["label_smoothing"])
        for name in _SETTINGS_FIELDS:
            if getattr(self, name) is not None:
                setattr(s, name, getattr(self, name))
        s.lr_milestones = milestone_epochs(s.epochs)   # fixed for the life of the run (resume keeps them)
        s.strict_solver = bool(self.strict_solver)
        cfg["settings"] = s.to_dict()
        cfg["val_seed"] = int(s.seed) + 1_000_003
        return cfg

    def resumed_run_config(self, saved: Mapping[str, Any]) -> Dict[str, Any]:
        """``saved`` (the ``config.json`` of the run being resumed) after checking that the
        given fields agree with it; ``data_root`` and ``strict_solver`` may change, and
        ``epochs`` may be raised: the run goes on with the learning-rate milestones it was
        created with (stored as epochs), so the schedule of the epochs already trained, and
        of those still to come, is the one an uninterrupted run of the new length with the
        same milestones follows. Runs created before the milestones were stored as epochs
        (fractions of ``epochs``) keep their schedule and cannot be lengthened."""
        saved_settings = saved.get("settings", {})
        legacy = "lr_schedule" not in saved_settings
        raised = self.epochs is not None and self.epochs != saved_settings.get("epochs")
        if raised:
            if self.epochs < saved_settings.get("epochs", 0):
                raise ConfigError(f"--epochs {self.epochs} is below the run's {saved_settings.get('epochs')} epochs; "
                                  f"--resume can only raise --epochs")
            if legacy:
                raise ConfigError(f"--epochs {self.epochs}: this run stores its learning-rate milestones as fractions "
                                  f"of its {saved_settings.get('epochs')} epochs (an older metasparse), so raising "
                                  f"--epochs would move them; resume without --epochs")
        if self.dataset is not None and self.dataset != saved["dataset"]:
            raise ConfigError(f"--dataset {self.dataset} contradicts the run being resumed ({saved['dataset']})")
        for name in _RUN_FIELDS:
            value = getattr(self, name)
            if value is not None and (value is not False or name == "amp") and saved.get(name) != value:
                raise ConfigError(f"{_flag(name)} {value} contradicts the run being resumed "
                                  f"({name}={saved.get(name)!r}); drop the flag or start a new --out")
        for name in _SETTINGS_FIELDS:
            value = getattr(self, name)
            if name == "epochs" and raised:
                continue
            if value is not None and saved["settings"].get(name) != value:
                raise ConfigError(f"{_flag(name)} {value} contradicts the run being resumed "
                                  f"({name}={saved['settings'].get(name)!r}); drop the flag or start a new --out")
        for name in _NEW_RUN_FIELDS:
            if getattr(self, name) is not None:
                raise ConfigError(f"{_flag(name)} cannot be changed when resuming; the run's config.json holds it")
        config = copy.deepcopy(dict(saved))
        if self.data_root:
            config["data_root"] = str(self.data_root)
        if self.strict_solver is not None:   # does not change the computation
            config["settings"]["strict_solver"] = bool(self.strict_solver)
        if legacy:
            config["settings"]["lr_schedule"] = LEGACY_SCHEDULE
        if raised:
            config["settings"]["epochs"] = int(self.epochs)
        return config



# ---------------------------------------------------------------------------- config files
# TrainConfig fields a configuration file does not hold (one invocation's, not the run's)
_NOT_IN_FILES = ("resume", "stop_after_steps")
# keys of a run's config.json that training derives (ignored when it is read as a config file)
_DERIVED = ("example_shape", "n_features", "val_seed", "test_query", "test_episodes", "imported_from")
_DERIVED_SETTINGS = ("momentum", "nesterov", "lr_milestones", "lr_factors", "lr_schedule")


def _dump(data: Dict[str, Any], path: Path) -> str:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml
        return yaml.safe_dump(data, sort_keys=False)
    return json.dumps(data, indent=1) + "\n"


def read_config_file(path: PathLike) -> Dict[str, Any]:
    """The TrainConfig fields in a configuration file (JSON or YAML by suffix; keys with
    dashes or underscores).  A run's ``config.json`` is read too: its ``settings`` are
    flattened and what training derived (``example_shape``, the learning-rate milestones of
    its length, ...) is dropped; any other key is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"--config {path}: not a readable configuration ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]})") from None
    except Exception as e:   # yaml.YAMLError
        raise ConfigError(f"--config {path}: not a readable YAML file ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of options, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    settings = data.pop("settings", None)
    if settings is not None:
        if not isinstance(settings, dict):
            raise ConfigError(f"--config {path}: 'settings' must be a mapping, got {type(settings).__name__}")
        epochs = settings.get("epochs")
        for key, value in settings.items():
            if key in _DERIVED_SETTINGS:
                if key == "lr_milestones" and isinstance(epochs, int) and value != milestone_epochs(epochs):
                    raise ConfigError(f"--config {path}: settings.lr_milestones {value} are not those of a new "
                                      f"{epochs}-epoch run ({milestone_epochs(epochs)}); to go on with that run's "
                                      f"schedule, --resume it")
                continue
            if key in data and data[key] != value:
                raise ConfigError(f"--config {path}: {key} is given twice ({data[key]!r} and settings.{key} {value!r})")
            data[key] = value
    for key in _DERIVED:
        data.pop(key, None)
    known = {f.name for f in fields(TrainConfig)} - set(_NOT_IN_FILES)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown option(s) {unknown}; expected some of {sorted(known)}")
    if data.get("val_episodes") is not None and not isinstance(data.get("val_episodes"), int):
        raise ConfigError(f"--config {path}: val_episodes must be an integer")
    return data
