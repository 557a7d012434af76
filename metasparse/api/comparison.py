"""``compare(CompareConfig) -> ComparisonResult``: checkpoints and heads on identical episodes."""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..engine.checkpoint import atomic_write_text, load_checkpoint
from ..engine.compare import Entry, compare_entries, markdown_table, write_comparison
from ..engine.distributed import resolve_device
from ..engine.evaluate import parse_cache_size
from ..errors import ConfigError
from ..registry import HEADS, dataset_name, head_entry
from .cross_domain import CrossDomain, evaluation_source
from .episode_sets import EpisodeSpec, episode_sets
from .model import checkpoint_model, swapped_head
from ..tradeoff import write_tradeoff
from .outputs import check_output_dir

COMPARE_FILES = ("compare.json", "compare.md", "tradeoff.json", "tradeoff.md")
#: every file name compare writes (the PNGs carry the shot in their names)
COMPARE_NAME = re.compile(r"^(compare\.(json|md)|tradeoff\.(json|md|png)|"
                          r"(feature_usage|accuracy_vs_sparsity)_\d+shot\.png)$")
_STAGE = re.compile(r"^\.compare\..+\.tmp$")

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
    ``"auto"`` (that bound), ``"off"`` or a size (``"2GB"``) that caps it. ``dataset``:
    compare on this dataset's episodes (from the episodes' ``data_root``) instead of the
    checkpoints' own: a cross-domain comparison (:mod:`~metasparse.api.cross_domain`), said
    in every file it writes ("cross-domain: trained on X, evaluated on Y")."""

    checkpoints: Sequence[PathLike]
    episodes: EpisodeSpec = field(default_factory=EpisodeSpec)
    heads: Optional[Sequence[str]] = None
    lambda_ratios: Optional[Sequence[float]] = None
    out: PathLike = "runs/compare"
    device: str = "auto"
    progress: bool = True
    force: bool = False
    feature_cache: Union[str, int, None] = "auto"
    dataset: Optional[str] = None

    def __post_init__(self) -> None:
        if self.dataset is not None:
            self.dataset = dataset_name(self.dataset)
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
    ``{shot: file}`` written for ``EpisodeSpec.save_episodes``; ``cross_domain``: a
    :class:`~metasparse.api.cross_domain.CrossDomain` when the episodes are of another
    dataset than the checkpoints' (then ``markdown`` starts with its line)."""

    result: Dict[str, Any]
    markdown: str
    paths: Dict[str, str]
    way: int
    n_episodes: int
    saved_episodes: Dict[int, Path]
    cross_domain: Optional[CrossDomain] = None


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
    out = check_output_dir(config.out, COMPARE_FILES, "--out", force=config.force)   # before the work
    if out.is_dir() and not config.force:       # the figures too (a user's PNG of a name compare writes)
        existing = sorted(f.name for f in out.iterdir() if COMPARE_NAME.match(f.name))
        if existing:
            raise ConfigError(f"--out {out} already holds results ({existing[0]}); pass --force to overwrite them "
                              f"or choose another --out")
    spec.check_save_paths(force=config.force)
    device = resolve_device(config.device)
    cks = [load_checkpoint(p) for p in config.checkpoints]
    ref_cfg = cks[0]["config"]
    for ck in cks[1:]:
        cfg = ck["config"]
        if cfg.get("dataset") != ref_cfg.get("dataset") or cfg.get("example_shape") != ref_cfg.get("example_shape"):
            raise ConfigError(f"compare: {ck['path']} was trained on {cfg.get('dataset')}, {cks[0]['path']} on "
                              f"{ref_cfg.get('dataset')}; compare checkpoints of one dataset")
    source, cross = evaluation_source(cks[0], config.dataset, spec.data_root, spec.split)
    labels = _labels(cks)
    ratios = config.lambda_ratios
    entries: List[Entry] = []
    for ck in cks:
        if ck is not cks[0]:
            _check_fits(ck, source, cross)
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
    extra = {"dataset": cross.evaluated_on if cross else ref_cfg["dataset"], "split": spec.split, "seed": spec.seed,
             "way": sets.way, **(cross.payload() if cross else {})}
    paths = _write_results(result, out, extra, cross)
    markdown = markdown_table(result)
    if cross:
        markdown = f"**{cross.describe()}**\n\n{markdown}"
    return ComparisonResult(result, markdown, paths, sets.way, sets.n_episodes, sets.saved, cross)


def _check_fits(ck: Dict[str, Any], source, cross: Optional[CrossDomain]) -> None:
    """Another checkpoint of the comparison takes the evaluation data too (same example shape:
    checked against the data in-domain, against the first checkpoint's cross-domain)."""
    from .data import check_data_fits
    if cross is None:
        check_data_fits(ck, source)
    elif list(ck["config"].get("example_shape", [])) != list(cross.example_shape):
        raise ConfigError(f"compare: {ck['path']} takes examples of shape {tuple(ck['config'].get('example_shape', []))}"
                          f", the first checkpoint {tuple(cross.example_shape)}; compare checkpoints of one dataset")


def _mark_cross_domain(stage: Path, cross: CrossDomain) -> None:
    """Put the cross-domain line under the title of each markdown report in ``stage``."""
    for name in ("compare.md", "tradeoff.md"):
        path = stage / name
        if path.is_file():
            title, sep, rest = path.read_text().partition("\n\n")
            atomic_write_text(path, f"{title}{sep}**{cross.describe()}**\n\n{rest}")


def _write_results(result: Dict[str, Any], out: Path, extra: Dict[str, Any],
                   cross: Optional[CrossDomain] = None) -> Dict[str, str]:
    """Write every result file into a staging folder inside ``out``, then move them into
    place together and remove the files of an earlier comparison this one does not write
    (an earlier sweep's ``tradeoff.*``): a killed or failed run never leaves new files beside
    stale ones.  Staging folders a killed run left are removed."""
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        if _STAGE.match(f.name) and f.is_dir() and not f.is_symlink():
            shutil.rmtree(f, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=".compare.", suffix=".tmp", dir=out))
    try:
        paths = write_comparison(result, stage, extra=extra)
        paths.update(write_tradeoff(result, stage, extra=extra))
        if cross:
            _mark_cross_domain(stage, cross)
        written = sorted(f.name for f in stage.iterdir())
        for name in written:
            os.replace(stage / name, out / name)
        for f in out.iterdir():
            if COMPARE_NAME.match(f.name) and f.name not in written and f.is_file() and not f.is_symlink():
                f.unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {key: str(out / Path(path).name) for key, path in paths.items()}
