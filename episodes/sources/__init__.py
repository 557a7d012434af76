"""Few-shot sources: one split of a dataset held in memory (see :class:`FewShotSource`), or
read from disk per episode (tieredImageNet: :class:`~episodes.sources.base.LazyImageSource`).

:func:`load_source` is the single entry point: it detects the on-disk format of
``dataset`` under one data root by file names (docs/data.md lists them).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Dict, List

if TYPE_CHECKING:   # imported on first use (torch): building CIFAR-FS / FC100 needs only numpy
    from .base import FewShotSource

__all__ = ["FewShotSource", "load_source", "DATASETS", "normalise_dataset", "normalise_split",
           "build_cifar_fs_fc100", "register_source"]

DATASETS = ("mini-imagenet", "cifar-fs", "fc100", "synthetic", "omniglot", "cub", "tiered-imagenet")
_ALIASES = {
    "mini-imagenet": "mini-imagenet", "miniimagenet": "mini-imagenet", "mini_imagenet": "mini-imagenet",
    "cifar-fs": "cifar-fs", "cifarfs": "cifar-fs", "cifar_fs": "cifar-fs",
    "fc100": "fc100", "fc-100": "fc100",
    "synthetic": "synthetic",
    "tiered-imagenet": "tiered-imagenet", "tieredimagenet": "tiered-imagenet", "tiered_imagenet": "tiered-imagenet",
    "omniglot": "omniglot",
    "cub": "cub", "cub-200-2011": "cub", "cub_200_2011": "cub", "cub200": "cub", "cub-200": "cub",
}
#: sources registered by users (:func:`register_source`): name -> loader(data_root, split, **options)
_REGISTERED: Dict[str, Callable[..., FewShotSource]] = {}
_SPLITS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


def __getattr__(name: str):
    if name == "FewShotSource":
        from .base import FewShotSource
        return FewShotSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_source(name: str, loader: Callable[..., FewShotSource], replace: bool = False) -> None:
    """Make :func:`load_source` read dataset ``name`` with ``loader(data_root, split, **options)``
    (``split`` normalised to "train", "val" or "test"), which returns a :class:`FewShotSource`."""
    key = str(name).strip().lower()
    if not replace and (key in _ALIASES or key in _REGISTERED):
        raise ValueError(f"a source called {name!r} exists")
    _REGISTERED[key] = loader


def normalise_dataset(dataset: str) -> str:
    key = str(dataset).strip().lower()
    if key in _REGISTERED:
        return key
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return _ALIASES[key]


def normalise_split(split: str) -> str:
    key = str(split).strip().lower()
    if key not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of train, val, test")
    return _SPLITS[key]


def _search_dirs(root: str) -> List[str]:
    """The data root itself, then its immediate sub-folders (sorted), e.g. root/miniImageNet/."""
    subs = sorted(os.path.join(root, e) for e in os.listdir(root) if os.path.isdir(os.path.join(root, e)))
    return [root] + subs


def load_source(dataset: str, data_root, split: str, **kwargs) -> FewShotSource:
    """Load split ``split`` of ``dataset`` from files found under ``data_root``.

    Formats, first match wins (the data root and its immediate sub-folders are searched):

    * mini-imagenet: MetaOptNet ``miniImageNet_category_split_*.pickle``, else learn2learn
      ``mini-imagenet-cache-*.pkl``;
    * cifar-fs: MetaOptNet ``CIFAR_FS_*.pickle``, else learn2learn
      ``cifarfs/processed/<split>/<class>/*.png``;
    * fc100: MetaOptNet ``FC100_*.pickle``;
    * tiered-imagenet: MetaOptNet ``{split}_images.npz``, else learn2learn ``{split}_images_png.pkl``,
      each with ``{split}_labels.pkl``; the images stay on disk (a ``LazyImageSource``);
    * omniglot: torchvision's ``omniglot-py/images_{background,evaluation}/`` folders (or the
      data root is ``omniglot-py/``), else its ``images_{background,evaluation}.zip``;
    * cub: ``CUB_200_2011/`` (``classes.txt``, ``images.txt``, ``image_class_labels.txt``,
      ``images/``), else ``CUB_200_2011.tgz``;
    * synthetic: generated (``data_root`` is ignored; ``kwargs`` go to
      :func:`episodes.sources.synthetic.make_synthetic_source`).

    Raises FileNotFoundError (missing root or split file) or ValueError (bad content).
    """
    dataset = normalise_dataset(dataset)
    if dataset in _REGISTERED:
        from .base import FewShotSource
        source = _REGISTERED[dataset](data_root, normalise_split(split), **kwargs)
        if not isinstance(source, FewShotSource):
            raise ValueError(f"{dataset}: its registered loader returned {type(source).__name__}, "
                             f"expected a FewShotSource")
        return source
    if dataset == "synthetic":
        split = normalise_split(split)
        from .synthetic import make_synthetic_source  # lazy: owned by the synthetic module
        return make_synthetic_source(split, **kwargs)
    if kwargs:
        raise TypeError(f"load_source({dataset!r}) takes no extra options; got {sorted(kwargs)}")
    split_in = split
    split = str(split).strip().lower()
    if not (dataset == "mini-imagenet" and split in ("train_phase_val", "train_phase_test")):
        split = normalise_split(split_in)
    if data_root is None:
        raise FileNotFoundError(f"{dataset}: no data root given (--data-root)")
    root = os.path.expanduser(os.fspath(data_root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{dataset}: data root '{root}' does not exist or is not a folder (--data-root)")
    dirs = _search_dirs(root)

    if dataset == "mini-imagenet":
        from . import miniimagenet as mi
        loader, path = mi.find_miniimagenet(dirs, split)
        if loader is None:
            raise FileNotFoundError(f"mini-imagenet: no {split} split file under '{root}'; expected "
                                    f"{' or '.join(mi.expected_files(split))}")
        return loader(path, split)

    if dataset == "omniglot":
        from . import omniglot as om
        location, partial = om.find_omniglot(dirs)
        if location is None:
            raise FileNotFoundError(f"omniglot: no Omniglot under '{root}'"
                                    + (f" ('{partial}' holds only one of {' / '.join(om.HALVES)})" if partial else "")
                                    + f"; expected {om.expected_layout()}")
        return om.load_omniglot(location, split)

    if dataset == "cub":
        from . import cub
        kind, path = cub.find_cub(dirs)
        if kind is None:
            raise FileNotFoundError(f"cub: no CUB-200-2011 under '{root}'; expected {cub.expected_layout()}")
        return cub.load_cub(kind, path, split)

    if dataset == "tiered-imagenet":
        from . import tiered
        kind, images, labels = tiered.find_tiered(dirs, split)
        if kind is None:
            raise FileNotFoundError(f"tiered-imagenet: no {split} split under '{root}'; expected "
                                    f"{tiered.expected_files(split)}")
        return tiered.load_tiered(kind, images, labels, split)

    from . import cifar
    name = cifar.metaoptnet_file(dataset, split)
    for d in dirs:
        if os.path.isfile(os.path.join(d, name)):
            return cifar.load_metaoptnet_cifar(os.path.join(d, name), dataset, split)
    if dataset == "cifar-fs":
        for d in dirs:
            for folder in cifar.l2l_folder_candidates(d, split):
                if os.path.isdir(folder):
                    return cifar.load_l2l_cifarfs_folder(folder, split)
        expected = f"{name} or cifarfs/processed/{split}/<class>/*.png"
    else:
        expected = name
    raise FileNotFoundError(f"{dataset}: no {split} split under '{root}'; expected {expected} "
                            f"(build pickles from cifar-100-python.tar.gz with `metasparse prepare`)")


def build_cifar_fs_fc100(archive_path, out_dir, dataset):
    """See :func:`episodes.sources.cifar.build_cifar_fs_fc100`."""
    from .cifar import build_cifar_fs_fc100 as build
    return build(os.fspath(archive_path), os.fspath(out_dir), normalise_dataset(dataset))
