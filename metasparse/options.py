"""The options of a training run, each declared once.

:data:`OPTIONS` is the one table of ``metasparse train``'s options.  Everything else is
derived from it:

* the command-line flags (``--train-shot`` for ``train_shot``; :func:`add_flags`);
* the fields of :class:`metasparse.api.TrainConfig` (their order, type and default);
* the keys of a run's ``config.json`` (``stored="run"``: top level; ``"settings"``: the
  optimisation settings, :class:`metasparse.engine.config.TrainSettings`; ``None``: how
  this invocation runs, not recorded);
* what ``--resume`` accepts (``on_resume``): ``"same"`` (given, it must equal the saved
  value), ``"new-run"`` (only a new run may give it), ``"may-change"`` (the given value
  replaces the saved one: it does not change the computation), ``"may-raise"`` (``epochs``:
  raised, the run goes on with its learning-rate milestones);
* the checks (:func:`check_value`), run on a new configuration, on a configuration file
  and on a saved ``config.json`` alike, each error naming the flag (``--lr``) or the file
  and key (``runs/x/config.json: settings.lr``).

A run option left ``None`` takes the dataset's default (MetaOptNet's protocol,
:data:`metasparse.engine.config.DATASET_DEFAULTS`), then the option's ``fallback``, then
the default of :class:`~metasparse.engine.config.TrainSettings`.

This module imports no torch: ``metasparse train --help`` reads it.
"""
from __future__ import annotations

import argparse
import math
import numbers
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .errors import ConfigError

__all__ = ["Option", "OPTIONS", "option", "flag", "check_value", "add_flags", "GROUPS"]

#: the groups of :data:`OPTIONS`, in the order ``--help`` and the docs list them
GROUPS = ("run directory", "data", "model", "episodes", "optimisation", "execution")


@dataclass(frozen=True)
class Option:
    """One option of a training run.

    ``type``: ``int``, ``float``, ``str``, ``bool``, ``dict`` (keyword options, JSON on the
    command line) or ``Path``.  ``default``: the value when not given (``None`` for the
    options of the run: the dataset's default applies).  ``fallback``: a new run's value
    when neither the option nor the dataset gives one.  Checks: ``minimum`` (inclusive),
    ``above`` / ``below`` (exclusive), ``choices``; floats must be finite.  ``names``: the
    values ``--help`` lists where more spellings are accepted (aliases).  ``flag_action``:
    how the flag is spelled when it is not ``--name VALUE`` (``"switch"``: ``--name``;
    ``"negate"``: ``--no-name``; ``"optional-bool"``: ``--name`` / ``--no-name``;
    ``"hidden"``: accepted but not shown).  ``in_files``: whether a configuration file may
    hold it."""

    name: str
    type: type
    group: str
    help: str
    stored: Optional[str] = "run"
    on_resume: str = "same"
    default: Any = None
    fallback: Any = None
    minimum: Optional[float] = None
    above: Optional[float] = None
    below: Optional[float] = None
    choices: Optional[Tuple[Any, ...]] = None
    names: Optional[Callable[[], Sequence[str]]] = None
    flag_action: Optional[str] = None
    metavar: Optional[str] = None
    in_files: bool = True
    required: bool = False

    @property
    def flag(self) -> str:
        return flag(self.name)


def flag(name: str) -> str:
    """The command-line flag of option ``name``: ``train_shot`` -> ``--train-shot``."""
    return "--" + name.replace("_", "-")


def _heads() -> Sequence[str]:
    from .registry import HEADS
    return list(HEADS)


def _backbones() -> Sequence[str]:
    from .registry import BACKBONES
    return list(BACKBONES)


def _datasets() -> Sequence[str]:
    from .registry import DATASETS
    return list(DATASETS)


def _solvers() -> Tuple[str, ...]:
    from .registry import SOLVERS
    return SOLVERS


_RUN, _SET = "run", "settings"
OPTIONS: Tuple[Option, ...] = (
    Option("out", Path, "run directory", "run directory (config.json, metrics.jsonl, last.pt, best.pt); required",
           stored=None, on_resume="may-change", required=True),
    # data
    Option("dataset", str, "data", "dataset (any case; MetaOptNet's miniImageNet, CIFAR_FS, FC100 work too)",
           names=_datasets),
    Option("data_root", Path, "data", "folder holding the dataset files (not needed for synthetic)",
           on_resume="may-change"),
    Option("source_options", dict, "data", "keyword options of the source (synthetic: n_factors, mixing, ...)",
           on_resume="new-run"),
    # model
    Option("backbone", str, "model", "backbone (default: the dataset's, resnet12; mlp for synthetic)",
           names=_backbones),
    Option("backbone_options", dict, "model", "options of the backbone, e.g. '{\"avg_pool\": true}'",
           on_resume="new-run"),
    Option("head", str, "model", "head (default group-sparse-svm)", names=_heads, fallback="group-sparse-svm"),
    Option("lambda_ratio", float, "model", "lambda1 / lambda_max per episode (group-sparse-svm)", stored=None,
           on_resume="new-run", minimum=0),
    Option("solver", str, "model", "SVM solver (the head's: checked by the registry)", stored=None,
           on_resume="new-run", names=_solvers),
    Option("head_options", dict, "model", "options of the head, e.g. '{\"dual_reg\": 1.0}'", on_resume="new-run"),
    Option("amp", bool, "model", "bf16 autocast for the backbone (default: on for ResNet-12 / Conv4 trained on "
           "CUDA, off otherwise; --no-amp turns it off)", flag_action="optional-bool"),
    Option("head_dtype", str, "model", "dtype of the features given to the head", choices=("float32", "float64"),
           fallback="float32"),
    # episodes
    Option("way", int, "episodes", "classes per episode (>= 2)", minimum=2),
    Option("train_shot", int, "episodes", "support examples per class during training", minimum=1),
    Option("query", int, "episodes", "query examples per class during training", minimum=1),
    Option("episodes_per_batch", int, "episodes", "episodes per optimisation step", minimum=1),
    Option("val_episodes", int, "episodes", "validation episodes per epoch (0: no validation)", minimum=0),
    Option("val_shot", int, "episodes", "support examples per class of the validation episodes", minimum=1),
    Option("val_query", int, "episodes", "query examples per class of the validation episodes", minimum=1),
    # optimisation (config.json's settings)
    Option("epochs", int, "optimisation", "epochs (--resume may raise it)", stored=_SET, on_resume="may-raise",
           minimum=1),
    Option("batches_per_epoch", int, "optimisation", "optimisation steps per epoch", stored=_SET, minimum=1),
    Option("optimizer", str, "optimisation", "optimiser", stored=_SET, choices=("sgd", "adam")),
    Option("lr", float, "optimisation", "base learning rate", stored=_SET, above=0),
    Option("weight_decay", float, "optimisation", "weight decay", stored=_SET, minimum=0),
    Option("label_smoothing", float, "optimisation", "label smoothing of the query loss, in [0, 1)", stored=_SET,
           minimum=0, below=1),
    Option("seed", int, "optimisation", "seed of the initial weights and of the episodes", stored=_SET,
           minimum=-2 ** 63, below=2 ** 63),
    Option("checkpoint_every", int, "optimisation", "also save last.pt every N batches (default 200; 0: at "
           "epoch ends only)", stored=_SET, minimum=0),
    Option("log_every", int, "optimisation", "metrics.jsonl step record every N batches (default 10)",
           stored=_SET, minimum=0),
    Option("strict_solver", bool, "optimisation", "stop with an error (exit status 1) at the first step where an "
           "episode's solver stops short of its tolerance, instead of one warning per epoch", stored=_SET,
           on_resume="may-change", flag_action="optional-bool"),
    # execution: how this invocation runs, not part of the run configuration
    Option("resume", bool, "execution", "continue the run in --out exactly where it stopped", stored=None,
           on_resume="may-change", default=False, flag_action="switch", in_files=False),
    Option("device", str, "execution", "auto | cpu | cuda | cuda:N", stored=None, on_resume="may-change",
           default="auto"),
    Option("num_workers", int, "execution", "DataLoader workers producing episodes", stored=None,
           on_resume="may-change", default=0, minimum=0),
    Option("augment_device", str, "execution", "where the training augmentation runs: auto = on the training "
           "device when it is CUDA (same episodes), cpu = in the episode producer", stored=None,
           on_resume="may-change", default="auto", choices=("auto", "cpu")),
    Option("progress", bool, "execution", "no progress bars", stored=None, on_resume="may-change", default=True,
           flag_action="negate"),
    Option("tensorboard", bool, "execution", "also log to RUN_DIR/tensorboard", stored=None,
           on_resume="may-change", default=False, flag_action="switch"),
    Option("sync_bn", bool, "execution", "with torchrun on GPUs: batch-norm statistics over all ranks",
           stored=None, on_resume="may-change", default=False, flag_action="switch"),
    Option("compile", bool, "execution", "torch.compile the backbone (one graph for all batch sizes; the first "
           "steps compile)", stored=None, on_resume="may-change", default=False, flag_action="switch"),
    Option("stop_after_steps", int, "execution", "stop after this many optimisation steps (tests)", stored=None,
           on_resume="may-change", minimum=1, flag_action="hidden", in_files=False),
)
_BY_NAME = {o.name: o for o in OPTIONS}


def option(name: str) -> Option:
    """The option called ``name``."""
    return _BY_NAME[name]


def _as_kind(value: Any, kind: type) -> Any:
    """``value`` as a ``kind`` (numpy integers and floats, any ``os.PathLike``), or None."""
    if isinstance(value, bool) and kind is not bool:
        return None
    if kind is int:
        try:
            return operator.index(value)
        except TypeError:
            return None
    if kind is float:
        return float(value) if isinstance(value, numbers.Real) else None
    if kind is Path:
        return value if isinstance(value, (str, os.PathLike)) else None
    return value if isinstance(value, kind) else None


_TYPE_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
               dict: "a dict of options", Path: "a path"}


def expected(opt: Option) -> str:
    """What ``opt`` takes, in words: ``a finite number > 0``, ``an integer >= 1``, ..."""
    what = _TYPE_NAMES[opt.type]
    if opt.type is int and opt.minimum == -2 ** 63 and opt.below == 2 ** 63:
        return what + " that fits in 64 bits"
    if opt.minimum is not None and opt.below is not None:
        return f"{what} in [{opt.minimum:g}, {opt.below:g})"
    if opt.minimum is not None:
        return f"{what} >= {opt.minimum:g}"
    if opt.above is not None:
        return f"{what} > {opt.above:g}"
    if opt.below is not None:
        return f"{what} < {opt.below:g}"
    return what


def check_value(opt: Option, value: Any, name: Optional[str] = None) -> Any:
    """``value`` of ``opt`` (an int given for a float becomes a float), or
    :class:`ConfigError` naming ``name`` (default: the flag) and what was expected."""
    name = name or opt.flag
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{name} {value!r}: expected one of {list(opt.choices)}")
    converted = _as_kind(value, opt.type)
    if converted is None:
        raise ConfigError(f"{name} must be {expected(opt)}, got {value!r} ({type(value).__name__})")
    if opt.type in (int, float) and not (
            (opt.type is int or math.isfinite(converted)) and (opt.minimum is None or converted >= opt.minimum)
            and (opt.above is None or converted > opt.above) and (opt.below is None or converted < opt.below)):
        raise ConfigError(f"{name} must be {expected(opt)}, got {value!r}")
    return converted


# ---------------------------------------------------------------------------- command line
def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option of :data:`OPTIONS` to ``parser``, grouped as :data:`GROUPS`.
    Every flag's default is None ("not given"): the configuration files, the saved run
    or :class:`~metasparse.api.TrainConfig`'s defaults fill what is not given."""
    groups = {g: parser.add_argument_group(f"{g} options") for g in GROUPS}
    for opt in OPTIONS:
        g = groups[opt.group]
        help_ = opt.help
        if opt.names is not None:
            help_ = " | ".join(opt.names()) + f": {help_}"
        if opt.flag_action == "switch":
            g.add_argument(opt.flag, dest=opt.name, action="store_true", default=None, help=help_)
        elif opt.flag_action == "negate":
            g.add_argument("--no-" + opt.flag[2:], dest=opt.name, action="store_false", default=None, help=help_)
        elif opt.flag_action == "optional-bool":
            g.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction, default=None,
                           help=help_)
        else:
            kind = {int: int, float: float}.get(opt.type, str)
            g.add_argument(opt.flag, dest=opt.name, type=kind, default=None, choices=opt.choices,
                           metavar="JSON" if opt.type is dict else opt.metavar,
                           help=argparse.SUPPRESS if opt.flag_action == "hidden" else help_)


def flag_values(args: argparse.Namespace) -> Dict[str, Any]:
    """The options given on the command line (``dict`` options parsed from JSON)."""
    import json
    values = {}
    for opt in OPTIONS:
        value = getattr(args, opt.name, None)
        if value is None:
            continue
        if opt.type is dict:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{opt.flag}: expected a JSON object such as '{{\"key\": 1}}', got {value!r} "
                                  f"({e.msg})") from None
            if not isinstance(value, dict):
                raise ConfigError(f"{opt.flag}: expected a JSON object, got {getattr(args, opt.name)!r}")
        values[opt.name] = value
    return values


# ---------------------------------------------------------------------------- documentation
_RESUME_WORDS = {"same": "must match", "new-run": "new run only", "may-change": "may change",
                 "may-raise": "may be raised"}


def markdown_table() -> str:
    """The table of options docs/cli.md shows (a test keeps the two equal):
    ``python -c "from metasparse.options import markdown_table; print(markdown_table())"``."""
    rows = ["| option (flag / file key) | type | stored in config.json | on --resume | meaning |",
            "|---|---|---|---|---|"]
    for opt in OPTIONS:
        if opt.flag_action == "hidden":
            continue
        spelled = {"negate": "--no-" + opt.flag[2:], "optional-bool": f"{opt.flag} / --no-{opt.flag[2:]}"}.get(
            opt.flag_action, opt.flag)
        kind = {dict: "JSON object", Path: "path", bool: "flag"}.get(opt.type, opt.type.__name__)
        if opt.choices:
            kind = " \\| ".join(map(str, opt.choices))
        elif opt.type in (int, float) and (opt.minimum is not None or opt.above is not None):
            kind = expected(opt).replace("a finite number", "float").replace("an integer", "int")
        stored = {"run": "yes", "settings": "`settings`", None: "no"}[opt.stored]
        meaning = opt.help.replace("|", "\\|")
        rows.append(f"| `{spelled}` (`{opt.name}`) | {kind} | {stored} | {_RESUME_WORDS[opt.on_resume]} "
                    f"| {meaning} |")
    return "\n".join(rows)
