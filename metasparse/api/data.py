"""Data access of the workflow: every call into ``episodes`` that reads or checks data.

``episodes`` reports bad data with ``ValueError`` / ``FileNotFoundError`` (and refuses
unsafe pickles with ``UnsafePickleError``); here they become
:class:`~metasparse.errors.DataError` / :class:`~metasparse.errors.DataNotFoundError`
with the same one-line message, so that only metasparse's own error types reach the
caller for bad input.
"""
from __future__ import annotations

import inspect
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

import episodes
from episodes.sources.safe_pickle import UnsafePickleError

from ..errors import CheckpointError, ConfigError, DataError, DataNotFoundError
from ..registry import dataset_entry

__all__ = ["data_errors", "load_source", "checkpoint_source", "example_shape", "episode_sampler",
           "sample_fixed_episodes", "load_episodes", "save_episodes", "check_data_fits", "build_cifar_fs_fc100",
           "metaoptnet_file"]


@contextmanager
def data_errors() -> Iterator[None]:
    """Translate the errors ``episodes`` raises for bad data into :class:`DataError`."""
    try:
        yield
    except FileNotFoundError as e:
        raise DataNotFoundError(str(e)) from None
    except (ValueError, UnsafePickleError) as e:
        raise DataError(str(e)) from None


def _check_source_options(dataset: str, options: Mapping[str, Any]) -> None:
    """Source options are the keyword arguments of the generator of a generated dataset, or
    of the loader of a registered one (:func:`metasparse.registry.register_dataset`)."""
    if not options:
        return
    entry = dataset_entry(dataset)
    if entry.loader is not None:   # a registered dataset: the keyword arguments of its loader
        params = inspect.signature(entry.loader).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        accepted = list(params)[2:]
    elif not entry.generated:
        raise ConfigError(f"--source-options: {dataset} takes no source options; got {sorted(options)}")
    else:
        from episodes.sources.synthetic import make_synthetic_source
        accepted = [p for p in inspect.signature(make_synthetic_source).parameters if p != "split"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"--source-options: {dataset} takes no option(s) {unknown}; expected some of {accepted}")


def load_source(dataset: str, data_root, split: str, options: Optional[Mapping[str, Any]] = None):
    """Split ``split`` of ``dataset`` (an ``episodes`` ``FewShotSource``) from ``data_root``."""
    options = dict(options or {})
    if not dataset_entry(dataset).generated and not data_root:
        raise ConfigError(f"--data-root is required for --dataset {dataset}")
    _check_source_options(dataset, options)
    if dataset_entry(dataset).generated:
        try:
            source = episodes.load_source(dataset, data_root, split, **options)
        except (TypeError, ValueError, OverflowError) as e:   # the options are the generator's arguments
            raise ConfigError(f"--source-options {json.dumps(options)}: {str(e).strip().splitlines()[0]}") from None
    else:
        with data_errors():
            source = episodes.load_source(dataset, data_root, split, **options)
    # (a split read from disk per episode holds uint8 images: nothing is read here)
    import torch   # here, not at the top: `metasparse prepare` (numpy work) loads this module too
    if source.dtype.is_floating_point and not bool(torch.isfinite(source.data).all()):
        origin = f"--source-options {json.dumps(options)}" if dataset_entry(dataset).generated else source.path
        raise DataError(f"{dataset}/{split}: the examples contain NaN or Inf (from {origin}); the data must be finite")
    return source


def checkpoint_source(checkpoint: Dict[str, Any], data_root, split: str):
    """Split ``split`` of the dataset a loaded checkpoint was trained on, from
    ``data_root`` (default: the run's own)."""
    cfg = checkpoint["config"]
    missing = [k for k in ("dataset", "data_root") if k not in cfg]
    if missing:
        raise CheckpointError(f"{checkpoint['path']}: the run configuration lacks {missing}")
    return load_source(cfg["dataset"], data_root or cfg["data_root"], split, cfg.get("source_options", {}))


def example_shape(source) -> List[int]:
    """The shape of one example of ``source``: ``[C, H, W]`` images or ``[D]`` vectors."""
    return [int(s) for s in source.example_shape]


def episode_sampler(source, way: int, shot: int, query: int, episodes_per_batch: int, seed: int, transform):
    """An ``episodes.EpisodeSampler`` (a way larger than the split, too few examples: DataError)."""
    with data_errors():
        return episodes.EpisodeSampler(source, way, shot, query, episodes_per_batch, seed, transform=transform)


def sample_fixed_episodes(source, way: int, shot: int, query: int, n: int, seed: int):
    """``n`` fixed episodes of ``source`` (see ``episodes.fixed.sample_fixed_episodes``)."""
    with data_errors():
        return episodes.sample_fixed_episodes(source, way, shot, query, n, seed=seed)


def load_episodes(path, source):
    """The episodes saved in ``path``, checked against ``source``."""
    with data_errors():
        return episodes.load_episodes(path, source)


def save_episodes(path, fixed) -> None:
    """Write ``fixed`` episodes to ``path`` (``.json`` or ``.pt``)."""
    with data_errors():
        episodes.save_episodes(path, fixed)


def check_data_fits(checkpoint: Dict[str, Any], source) -> None:
    """The evaluation data must have the example shape the checkpoint was trained on."""
    cfg = checkpoint["config"]
    shape = example_shape(source)
    if list(cfg.get("example_shape", shape)) != shape:
        raise DataError(f"{checkpoint['path']} was trained on {cfg['dataset']} examples of shape "
                        f"{tuple(cfg['example_shape'])}, the evaluation data has {tuple(shape)}")


def build_cifar_fs_fc100(archive, out_dir, dataset: str) -> Dict[str, str]:
    """Build the MetaOptNet pickles of ``dataset`` from the CIFAR-100 ``archive``."""
    if not Path(archive).exists():
        raise DataNotFoundError(f"--cifar100 {archive}: no such file (expected cifar-100-python.tar.gz or the "
                                f"extracted cifar-100-python/ folder)")
    with data_errors():
        return episodes.build_cifar_fs_fc100(archive, out_dir, dataset)


def metaoptnet_file(dataset: str, split: str) -> str:
    """The MetaOptNet file name of ``split`` of a CIFAR-derived ``dataset`` (``CIFAR_FS_train.pickle``)."""
    from episodes.sources.cifar import metaoptnet_file as name
    return name(dataset, split)
