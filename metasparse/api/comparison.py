"""``compare(CompareConfig) -> ComparisonResult``: checkpoints and heads on identical episodes."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..engine.checkpoint import load_checkpoint
from ..engine.compare import Entry, compare_entries, markdown_table, write_comparison
from ..engine.distributed import resolve_device
from ..engine.evaluate import parse_cache_size
from ..errors import ConfigError
from ..registry import HEADS, head_entry
from .data import check_data_fits, checkpoint_source
from .episode_sets import EpisodeSpec, episode_sets
from .model import checkpoint_model, swapped_head
from ..tradeoff import write_tradeoff
from .outputs import check_output_dir

COMPARE_FILES = ("compare.json", "compare.md", "tradeoff.json", "tradeoff.md")

__all__ = ["CompareConfig", "ComparisonResult", "compare"]

PathLike = Union[str, Path]


@dataclass
class CompareConfig:
    """Compare ``checkpoints`` (of one dataset) on the episodes of ``episodes``.

    Each checkpoint is evaluated with its own head, or with each of ``heads`` (the sparse
    head once per value of ``lambda_ratios``; ``lambda_ratios`` without ``heads`` means
    ``heads = ["svm", "group-sparse-svm"]``). The first entry is the reference of the
    paired differences. With ``lambda_ratios`` the trade-off files are written too
    (:mod:`metasparse.tradeoff`: accuracy against ``lambda / lambda_max`` and against the
    fraction of features used, per shot). ``out``: the folder of ``compare.json``, ``compare.md`` and the
    figures, checked before any work; results already there are replaced only with
    ``force``. ``feature_cache``: the entries of one checkpoint are evaluated on features
    embedded once per episode, cached on the device within half its free memory (else in a
    quarter of the host's available memory, else re-embedded per entry, said in one line);
    ``"auto"`` (that bound), ``"off"`` or a size (``"2GB"``) that caps it."""

    checkpoints: Sequence[PathLike]
    episodes: EpisodeSpec = field(default_factory=EpisodeSpec)
    heads: Optional[Sequence[str]] = None
    lambda_ratios: Optional[Sequence[float]] = None
    out: PathLike = "runs/compare"
    device: str = "auto"
    progress: bool = True
    force: bool = False
    feature_cache: Union[str, int, None] = "auto"

    def __post_init__(self) -> None:
        try:
            parse_cache_size(self.feature_cache)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if isinstance(self.checkpoints, (str, Path)) or not self.checkpoints:
            raise ConfigError(f"compare: expected a list of checkpoints, got {self.checkpoints!r}")
        if self.heads is not None:
            self.heads = [head_entry(h).name for h in self.heads]
        elif self.lambda_ratios:   # a lambda sweep: the vanilla SVM (lambda = 0, the reference) and the sweep
            self.heads = ["svm", "group-sparse-svm"]


@dataclass
class ComparisonResult:
    """``result``: the numbers (``reference`` and per shot one row per entry, as in
    ``compare.json``); ``markdown``: the table of ``compare.md``; ``paths``: the files
    written; ``way`` and ``n_episodes`` (per shot) of the episodes; ``saved_episodes``:
    ``{shot: file}`` written for ``EpisodeSpec.save_episodes``."""

    result: Dict[str, Any]
    markdown: str
    paths: Dict[str, str]
    way: int
    n_episodes: int
    saved_episodes: Dict[int, Path]


def _labels(checkpoints: List[Dict[str, Any]]) -> Optional[Dict[str, str]]:
    """Entry-name prefix of each checkpoint: its run directory, or run/file when runs repeat
    (None for a single checkpoint: no prefix)."""
    if len(checkpoints) < 2:
        return None
    parents = [Path(ck["path"]).parent.name for ck in checkpoints]
    return {ck["path"]: (p if parents.count(p) == 1 else f"{p}/{Path(ck['path']).stem}")
            for ck, p in zip(checkpoints, parents)}


def _entry_name(labels: Optional[Dict[str, str]], path: str, head: str, opts: Dict[str, Any]) -> str:
    name = head
    if head_entry(head).sparse and "lambda_ratio" in opts:
        name += f"(r={opts['lambda_ratio']:g})"
    return f"{labels[path]}:{name}" if labels else name


def compare(config: CompareConfig) -> ComparisonResult:
    """Evaluate every (checkpoint, head) entry on the same episodes; write ``compare.json``,
    ``compare.md`` and the PNG figures to ``config.out``."""
    spec = config.episodes
    check_output_dir(config.out, COMPARE_FILES, "--out", force=config.force)   # before the work, not after it
    spec.check_save_paths(force=config.force)
    device = resolve_device(config.device)
    cks = [load_checkpoint(p) for p in config.checkpoints]
    ref_cfg = cks[0]["config"]
    for ck in cks[1:]:
        cfg = ck["config"]
        if cfg.get("dataset") != ref_cfg.get("dataset") or cfg.get("example_shape") != ref_cfg.get("example_shape"):
            raise ConfigError(f"compare: {ck['path']} was trained on {cfg.get('dataset')}, {cks[0]['path']} on "
                              f"{ref_cfg.get('dataset')}; compare checkpoints of one dataset")
    source = checkpoint_source(cks[0], spec.data_root, spec.split)
    labels = _labels(cks)
    ratios = config.lambda_ratios
    entries: List[Entry] = []
    for ck in cks:
        check_data_fits(ck, source)
        model = checkpoint_model(ck).to(device)
        for h in config.heads or [None]:
            if h is None:
                name, opts = ck["config"]["head"], ck["config"]["head_options"]
                entries.append(Entry(_entry_name(labels, ck["path"], name, opts), model, None,
                                     {"checkpoint": ck["path"], "head": name, "head_options": opts}))
                continue
            for r in (ratios if (HEADS[h].sparse and ratios) else [None]):
                name, opts, head = swapped_head(ck["config"], h, r, None, None)
                entries.append(Entry(_entry_name(labels, ck["path"], name, opts), model, head.to(device),
                                     {"checkpoint": ck["path"], "head": name, "head_options": opts}))
    if ratios and not any(head_entry(e.info["head"]).sparse for e in entries):
        sparse = " / ".join(e.name for e in HEADS.values() if e.sparse)
        raise ConfigError(f"--lambda-ratios needs a {sparse} entry (add it to --heads)")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"compare: entry names must be unique, got {names}")
    sets = episode_sets(spec, ref_cfg, source)
    result = compare_entries(entries, sets.streams, device, progress=config.progress,
                             feature_cache=parse_cache_size(config.feature_cache),
                             log=lambda msg: print(f"metasparse compare: {msg}", file=sys.stderr))
    extra = {"dataset": ref_cfg["dataset"], "split": spec.split, "seed": spec.seed, "way": sets.way}
    paths = write_comparison(result, config.out, extra=extra)
    paths.update(write_tradeoff(result, config.out, extra=extra))
    return ComparisonResult(result, markdown_table(result), paths, sets.way, sets.n_episodes, sets.saved)
