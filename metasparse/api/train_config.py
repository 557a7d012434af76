"""``TrainConfig``: the options of a training run, validated when the object is made.

Its fields are the options of :data:`metasparse.options.OPTIONS` (one table declares each
option's name, type, default, help, check and what ``--resume`` accepts).  A field left
``None`` takes the dataset's default (MetaOptNet's protocol, see
:mod:`metasparse.engine.config`) in a new run, and the saved value when resuming.
:meth:`TrainConfig.run_config` resolves a new run's configuration (what ``config.json``
holds); :meth:`TrainConfig.resumed_run_config` checks the given fields against a saved one.
Error messages name each option by its command-line flag (``way`` is ``--way``).
"""
from __future__ import annotations

import copy
import json
from dataclasses import field, fields, make_dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from ..engine.checkpoint import atomic_write_text
from ..engine.config import LEGACY_SCHEDULE, TrainSettings, milestone_epochs
from ..errors import ConfigError
from ..options import GROUPS, OPTIONS, check_value, flag
from ..registry import (DATASETS, DEFAULT_HEAD, backbone_entry, dataset_defaults, dataset_entry, head_entry,
                        head_options)

__all__ = ["TrainConfig", "read_config_file", "default_amp"]

PathLike = Union[str, Path]


def default_amp(backbone: str, device_type: Optional[str]) -> bool:
    """bf16 autocast of the backbone unless asked otherwise: on for an image backbone
    (ResNet-12, Conv4: convolutions, whose accuracy bf16 does not change, at several times
    the speed on tensor cores) trained on CUDA; off on the CPU (slow bf16) and for the MLP
    of vector data (the synthetic experiments compare representations closely)."""
    return device_type == "cuda" and backbone_entry(backbone).images


class _TrainConfigMethods:
    """The behaviour of :class:`TrainConfig` (its fields come from the table of options)."""

    def __post_init__(self) -> None:
        if self.out is None:
            raise ConfigError("--out is required (the run directory)")
        if str(self.out).strip() == "":   # Path("") is the current directory
            raise ConfigError("--out '': expected a run directory")
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            if value is not None:
                setattr(self, opt.name, check_value(opt, value))
        self.out = Path(self.out)
        if self.data_root is not None:
            self.data_root = Path(self.data_root)
        if self.dataset is not None:   # the canonical name: MetaOptNet's miniImageNet is mini-imagenet
            self.dataset = dataset_entry(self.dataset).name
        if self.head is not None:
            self.head = head_entry(self.head).name
        if not self.resume:   # resuming rejects these options (the run's config.json holds them)
            head_options(self.head or DEFAULT_HEAD, self.lambda_ratio, self.solver)
        if self.backbone is not None:
            self.backbone = backbone_entry(self.backbone).name

    # ---------------------------------------------------------------- files
    @classmethod
    def from_file(cls, path: PathLike, **overrides: Any) -> "TrainConfig":
        """The configuration in ``path`` (JSON, or YAML for ``.yaml`` / ``.yml``; a run's
        ``config.json`` works too), with ``overrides`` (fields given by keyword, e.g. the
        command line's flags) taking precedence.  ``out`` must come from ``overrides``
        unless the file has it."""
        values = read_config_file(path)
        values.update(overrides)
        if values.get("out") is None:
            raise ConfigError(f"{path}: no 'out'; give the run directory (--out)")
        return cls(**values)

    def to_file(self, path: PathLike) -> Path:
        """Write the fields that were given (not None, not the defaults of execution) to
        ``path`` (JSON, or YAML for ``.yaml`` / ``.yml``), atomically; :meth:`from_file`
        reads it back."""
        path = Path(path)
        data = {}
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            if not opt.in_files or value is None or value == opt.default:
                continue
            data[opt.name] = str(value) if isinstance(value, Path) else value
        atomic_write_text(path, _dump(data, path))
        return path

    # ---------------------------------------------------------------- run configuration
    def run_config(self, device_type: Optional[str] = None) -> Dict[str, Any]:
        """The configuration of a new run: the dataset's defaults overridden by the given
        fields (JSON-able; training adds ``example_shape`` and ``n_features``); ``amp``
        left None resolves for ``device_type`` ("cuda", "cpu"; None: off) by
        :func:`default_amp`."""
        if self.dataset is None:
            raise ConfigError("--dataset is required (one of " + ", ".join(DATASETS) + ")")
        d = dataset_defaults(self.dataset)
        cfg: Dict[str, Any] = {}
        settings = {f.name: d[f.name] for f in fields(TrainSettings) if f.name in d}
        for opt in OPTIONS:
            if opt.stored is None:
                continue
            value = getattr(self, opt.name)
            if value is None:
                value = d.get(opt.name, opt.fallback)
            if isinstance(value, Path):
                value = str(value)
            if opt.stored == "settings":
                if value is not None:
                    settings[opt.name] = value
            else:
                cfg[opt.name] = value
        cfg["source_options"] = dict(cfg["source_options"] or {})
        cfg["head"] = head_entry(cfg["head"]).name   # a dataset's default may be spelled otherwise
        cfg["backbone"] = backbone_entry(cfg["backbone"]).name
        cfg["head_options"] = head_options(cfg["head"], self.lambda_ratio, self.solver, self.head_options)
        defaults = d["backbone_options"] if cfg["backbone"] == backbone_entry(d["backbone"]).name else {}
        cfg["backbone_options"] = {**defaults, **(self.backbone_options or {})}
        if cfg["amp"] is None:
            cfg["amp"] = default_amp(cfg["backbone"], device_type)
        cfg.update({"test_query": d["test_query"], "test_episodes": d["test_episodes"]})
        s = TrainSettings(**settings)
        s.lr_milestones = milestone_epochs(s.epochs)   # fixed for the life of the run (resume keeps them)
        cfg["settings"] = s.to_dict()
        cfg["val_seed"] = int(s.seed) + 1_000_003
        return cfg

    def resumed_run_config(self, saved: Mapping[str, Any]) -> Dict[str, Any]:
        """``saved`` (the ``config.json`` of the run being resumed) after checking the given
        fields against it, as each option's ``on_resume`` says (:mod:`metasparse.options`):
        options that define the computation must agree (``"same"``) or cannot be given
        (``"new-run"``); ``data_root`` and ``strict_solver`` may change, and ``epochs`` may be
        raised: the run goes on with the learning-rate milestones it was created with (stored
        as epochs), so the schedule of the epochs already trained, and of those still to
        come, is the one an uninterrupted run of the new length with the same milestones
        follows. Runs created before the milestones were stored as epochs (fractions of
        ``epochs``) keep their schedule and cannot be lengthened."""
        config = copy.deepcopy(dict(saved))
        settings = config.setdefault("settings", {})
        legacy = "lr_schedule" not in settings
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            if value is None or (opt.stored is None and opt.on_resume == "may-change"):
                continue
            where = settings if opt.stored == "settings" else config
            key = opt.name if opt.stored == "settings" else opt.name
            shown = f"settings.{key}" if opt.stored == "settings" else key
            if opt.on_resume == "new-run":
                raise ConfigError(f"{opt.flag} cannot be changed when resuming; the run's config.json holds it")
            if opt.on_resume == "may-change":
                where[key] = str(value) if isinstance(value, Path) else value
            elif opt.on_resume == "may-raise":
                if value == where.get(key):
                    continue
                if value < where.get(key, 0):
                    raise ConfigError(f"{opt.flag} {value} is below the run's {where.get(key)} {opt.name}; "
                                      f"--resume can only raise {opt.flag}")
                if legacy:
                    raise ConfigError(f"{opt.flag} {value}: this run stores its learning-rate milestones as "
                                      f"fractions of its {where.get(key)} epochs (an older metasparse), so raising "
                                      f"{opt.flag} would move them; resume without {opt.flag}")
                where[key] = value
            elif where.get(key) != value:
                raise ConfigError(f"{opt.flag} {value} contradicts the run being resumed ({shown}="
                                  f"{where.get(key)!r}); drop the flag or start a new --out")
        if legacy:
            settings["lr_schedule"] = LEGACY_SCHEDULE
        return config


def _field_type(opt) -> Any:
    kind = {Path: PathLike, dict: Dict[str, Any]}.get(opt.type, opt.type)
    return kind if opt.required or opt.default is not None else Optional[kind]


def _doc() -> str:
    lines = ["A meta-training run in ``out`` (``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``).",
             "",
             "Fields (:data:`metasparse.options.OPTIONS`; ``None``: the dataset's default in a new run, the",
             "saved value when resuming):", ""]
    for group in GROUPS:
        names = ", ".join(f"``{o.name}``" for o in OPTIONS if o.group == group)
        lines.append(f"* {group}: {names}")
    lines += ["", "Execution options are not part of the run configuration."]
    return "\n".join(lines)


TrainConfig = make_dataclass(
    "TrainConfig",
    [(o.name, _field_type(o)) if o.required else (o.name, _field_type(o), field(default=o.default))
     for o in OPTIONS],
    bases=(_TrainConfigMethods,), namespace={"__doc__": _doc(), "__module__": __name__})


# ---------------------------------------------------------------------------- config files
# keys of a run's config.json that training derives (ignored when it is read as a config file)
_DERIVED = ("example_shape", "n_features", "val_seed", "test_query", "test_episodes", "imported_from",
            "normalisation")
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
    known = {o.name for o in OPTIONS if o.in_files}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown option(s) {unknown}; expected some of {sorted(known)}")
    for opt in OPTIONS:   # each value checked here, so that the error names the file
        if data.get(opt.name) is not None:
            data[opt.name] = check_value(opt, data[opt.name], f"--config {path}: {opt.name}")
    return data
