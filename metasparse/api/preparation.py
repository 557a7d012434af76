"""``prepare(PrepareConfig) -> {split: file}``: build a dataset's files from a public archive."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Union

from ..errors import ConfigError
from ..registry import DATASETS, dataset_name
from .data import build_cifar_fs_fc100, metaoptnet_file
from .outputs import check_new_folder

__all__ = ["PrepareConfig", "prepare"]

PathLike = Union[str, Path]


def _canonical(name: str) -> str:
    try:
        return dataset_name(name)
    except ConfigError:
        return name


@dataclass
class PrepareConfig:
    """Build ``dataset`` (CIFAR-FS or FC100) from the official ``cifar100`` archive
    (``cifar-100-python.tar.gz``) into the folder ``out`` (MetaOptNet-format pickles)."""

    dataset: str
    cifar100: PathLike
    out: PathLike
    force: bool = False

    def __post_init__(self) -> None:
        buildable = [d.name for d in DATASETS.values() if d.from_cifar100]
        if _canonical(self.dataset) in buildable:
            self.dataset = _canonical(self.dataset)
        if self.dataset not in buildable:
            raise ConfigError(f"prepare: dataset {self.dataset!r}: expected one of {buildable}")
        if str(self.out).strip() == "":
            raise ConfigError("--out '': expected a folder for the dataset files")


def prepare(config: PrepareConfig) -> Dict[str, str]:
    """Write the train / val / test files of ``config.dataset``; returns ``{split: path}``.

    The output folder is checked before the archive is read: files of the dataset already
    there are replaced only with ``force``.  All splits are built before any file is
    replaced (a killed run leaves the previous files), and temporary files a killed run
    left are removed."""
    out = check_new_folder(config.out, "a folder for the dataset files")
    existing = [out / metaoptnet_file(config.dataset, split) for split in ("train", "val", "test")]
    existing = [p for p in existing if p.exists() or p.is_symlink()]
    if existing and not config.force:
        raise ConfigError(f"--out {out} already holds {', '.join(p.name for p in existing)}; pass --force to "
                          f"replace them or choose another --out")
    bad = [p for p in existing if p.is_dir() or p.is_symlink()]
    if bad:
        raise ConfigError(f"--out {out}: {bad[0]} is a {'folder' if bad[0].is_dir() else 'symbolic link'}; "
                          f"--force replaces only files")
    return build_cifar_fs_fc100(config.cifar100, config.out, config.dataset)
