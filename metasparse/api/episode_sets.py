"""``EpisodeSpec``: the meta-test episodes of ``evaluate`` and ``compare``.

Episode ``t`` of shot ``K`` is episode ``t`` of ``episodes.fixed.sample_fixed_episodes``
with seed ``seed + 7919 K``: the same tasks for every checkpoint and head, on every
machine. An episodes file (``episodes_file``) gives the episodes instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from ..engine.streams import FixedStream
from ..errors import CheckpointError, ConfigError
from .data import load_episodes, sample_fixed_episodes, save_episodes
from .outputs import check_output_file

__all__ = ["EpisodeSpec", "EpisodeSets", "episode_sets"]

PathLike = Union[str, Path]
_SPLITS = ("train", "val", "test")


#: the most meta-test episodes drawn per shot
MAX_EPISODES = 100_000


@dataclass
class EpisodeSpec:
    """Which episodes a model is meta-tested on.

    ``split`` of the dataset the checkpoint was trained on, read from ``data_root``
    (default: the run's own); per shot in ``shots`` (default 1 and 5), ``n_episodes``
    episodes (default: the run's ``test_episodes``, 1000; synthetic 500) of ``way``
    classes (default: the training way) with ``query`` queries per class (default 15),
    drawn with ``seed``; or the episodes saved in ``episodes_file`` (then none of
    ``shots``, ``n_episodes``, ``way``, ``query`` may be given). ``save_episodes`` writes
    the drawn episodes there (``NAME_{K}shot.EXT`` for several shots). ``batch_size``
    episodes go through the model at once (it does not change results)."""

    split: str = "test"
    shots: Optional[Sequence[int]] = None
    way: Optional[int] = None
    query: Optional[int] = None
    n_episodes: Optional[int] = None
    seed: int = 0
    episodes_file: Optional[PathLike] = None
    save_episodes: Optional[PathLike] = None
    batch_size: int = 8
    data_root: Optional[PathLike] = None

    def __post_init__(self) -> None:
        if self.split not in _SPLITS:
            raise ConfigError(f"--split {self.split!r}: expected one of {list(_SPLITS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not -2 ** 63 <= self.seed < 2 ** 63:
            # the episode seeds are hashed modulo 2^64: 2^64 would silently be seed 0 (train refuses it too)
            raise ConfigError(f"--seed must be an integer that fits in 64 bits, got {self.seed!r}")
        if self.episodes_file:
            for flag, value in (("--shot", self.shots), ("--episodes", self.n_episodes), ("--way", self.way),
                                ("--query", self.query)):
                if value is not None:
                    raise ConfigError(f"{flag} contradicts --episodes-file (the file defines the episodes); "
                                      f"drop one of them")
        if self.episodes_file and self.save_episodes:
            raise ConfigError("--save-episodes contradicts --episodes-file (those episodes are already saved); "
                              "drop one of them")
        for flag, value in (("--way", self.way), ("--query", self.query), ("--episodes", self.n_episodes),
                            *(("--shot", k) for k in self.shots or ())):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if self.n_episodes is not None and self.n_episodes > MAX_EPISODES:
            # the episodes are drawn (indices held in memory) before the evaluation: 10^8 of them
            # grew the process by ~20 MB/s with no output
            raise ConfigError(f"--episodes {self.n_episodes}: at most {MAX_EPISODES} per shot (the 95% interval "
                              f"is then +- 0.3 points or less; MetaOptNet uses 1000-2000)")
        if self.way is not None and self.way < 2:
            raise ConfigError(f"--way must be >= 2 (a few-shot task tells classes apart), got {self.way}")

    def shot_list(self) -> Tuple[int, ...]:
        """The shots evaluated when the episodes are drawn (default 1 and 5)."""
        return tuple(self.shots) if self.shots is not None else (1, 5)

    def save_paths(self) -> Dict[int, Path]:
        """``{shot: file}`` that ``save_episodes`` writes (``NAME_{K}shot.EXT`` for several shots)."""
        if not self.save_episodes or self.episodes_file:
            return {}
        path, shots = Path(self.save_episodes), self.shot_list()
        if len(shots) == 1:
            return {shots[0]: path}
        return {k: path.with_name(f"{path.stem}_{k}shot{path.suffix}") for k in shots}

    def check_save_paths(self, force: bool = False) -> None:
        """Refuse, before any work, ``--save-episodes`` files that cannot be written (a bad
        suffix, a file in place of a folder, a read-only folder, or an existing file
        without ``force``); missing folders are created when the file is written."""
        for path in self.save_paths().values():
            if path.suffix.lower() not in (".json", ".pt"):
                raise ConfigError(f"--save-episodes {path}: episode files must end in .json or .pt")
            check_output_file(path, "--save-episodes", force=force)


@dataclass
class EpisodeSets:
    """``streams``: ``{shot: re-iterable batches}`` shared by every model evaluated;
    ``n_episodes`` and ``way`` per shot; ``saved``: ``{shot: file}`` written for ``save_episodes``."""

    streams: Dict[int, FixedStream]
    n_episodes: int
    way: int
    saved: Dict[int, Path]


def episode_sets(spec: EpisodeSpec, run_config: Mapping[str, Any], source) -> EpisodeSets:
    """The episodes of ``spec`` on ``source`` (a split of the data of run ``run_config``)."""
    if spec.episodes_file:
        fixed = load_episodes(spec.episodes_file, source)
        return EpisodeSets({fixed.shot: FixedStream(fixed, source, spec.batch_size)}, len(fixed), fixed.way, {})
    if spec.way is None and (isinstance(run_config.get("way"), bool) or not isinstance(run_config.get("way"), int)):
        raise CheckpointError(f"--checkpoint: its run configuration has no valid 'way' ({run_config.get('way')!r}); "
                              f"pass --way")
    way = run_config["way"] if spec.way is None else spec.way
    query = run_config.get("test_query", 15) if spec.query is None else spec.query
    n = run_config.get("test_episodes", 1000) if spec.n_episodes is None else spec.n_episodes
    targets = spec.save_paths()
    streams: Dict[int, FixedStream] = {}
    saved: Dict[int, Path] = {}
    for k in spec.shot_list():
        fixed = sample_fixed_episodes(source, way, k, query, n, seed=spec.seed + 7919 * k)
        streams[k] = FixedStream(fixed, source, spec.batch_size)
        if k in targets:
            save_episodes(targets[k], fixed)
            saved[k] = targets[k]
    return EpisodeSets(streams, n, way, saved)
