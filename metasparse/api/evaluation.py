"""``evaluate(EvalConfig) -> EvaluationResult``: meta-test one checkpoint."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..engine.checkpoint import atomic_write_text, load_checkpoint
from ..engine.distributed import resolve_device
from ..engine.evaluate import evaluate_episodes
from ..errors import ConfigError
from ..registry import dataset_name, head_entry, head_options
from .cross_domain import CrossDomain, evaluation_source
from .episode_sets import EpisodeSpec, episode_sets
from .model import ModelSpec, checkpoint_model, swapped_head
from .outputs import check_output_file, evaluation_file_name

__all__ = ["EvalConfig", "EvaluationResult", "evaluate"]

PathLike = Union[str, Path]


@dataclass
class EvalConfig:
    """Meta-test ``checkpoint`` (a ``.pt`` file or a run directory: its ``best.pt``, else
    ``last.pt``) on the episodes of ``episodes``.

    ``head`` swaps the trained head (keeping the backbone); ``lambda_ratio``, ``solver``
    and ``head_options`` re-parameterise the swapped head, or the trained one when
    ``head`` is None. ``dataset``: evaluate on this dataset's episodes (read from the
    episodes' ``data_root``) instead of the checkpoint's: a cross-domain evaluation, its
    images resized to the checkpoint's example shape and normalised with the training
    dataset's statistics (:mod:`~metasparse.api.cross_domain`); its results say
    "cross-domain: trained on X, evaluated on Y". ``out``: the results JSON (default: next to the checkpoint, a name
    that encodes what was evaluated, :func:`~metasparse.api.outputs.evaluation_file_name`,
    e.g. ``eval_best_group-sparse-svm_r0.01_test_1-5shot_seed0.json``); an existing file
    is replaced only with ``force``. The output location is checked before any work."""

    checkpoint: PathLike
    episodes: EpisodeSpec = field(default_factory=EpisodeSpec)
    head: Optional[str] = None
    lambda_ratio: Optional[float] = None
    solver: Optional[str] = None
    head_options: Optional[Dict[str, Any]] = None
    out: Optional[PathLike] = None
    device: str = "auto"
    progress: bool = True
    force: bool = False
    dataset: Optional[str] = None

    def __post_init__(self) -> None:
        if self.dataset is not None:
            self.dataset = dataset_name(self.dataset)
        if self.head_options is not None and not isinstance(self.head_options, dict):
            raise ConfigError(f"--head-options: expected a dict of options, got {self.head_options!r}")
        if self.head is not None:
            self.head = head_entry(self.head).name
            head_options(self.head, self.lambda_ratio, self.solver, self.head_options)


class ShotResults(dict):
    """``{shot: summary}`` keyed by strings (``"5"``, as in the JSON file) that also answers
    integer keys (``results[5]``)."""

    def __missing__(self, key):
        if isinstance(key, int) and not isinstance(key, bool) and str(key) in self:
            return self[str(key)]
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or (isinstance(key, int) and dict.__contains__(self, str(key)))

    def get(self, key, default=None):
        return self[key] if key in self else default


@dataclass
class EvaluationResult:
    """The numbers of an evaluation and where they were written.

    ``results``: ``{shot: summary}`` with ``accuracy``, ``ci95``, ``std``, ``episodes``,
    ``features_used_fraction``, ``features_used_ci95``, ``features_used_mean``,
    ``n_features``, ``features_never_used``, ``loss`` (and ``max_rel_gap``,
    ``unconverged_episodes`` for the SVM heads); shots are strings, as in the JSON file.
    ``head`` / ``head_options``: the head evaluated; ``trained_head``: the checkpoint's;
    ``way``: classes per episode; ``n_episodes``: episodes per shot; ``out``: the JSON
    file; ``saved_episodes``: ``{shot: file}`` written for ``EpisodeSpec.save_episodes``;
    ``dataset``: the dataset evaluated on; ``cross_domain``: a
    :class:`~metasparse.api.cross_domain.CrossDomain` when it is not the training dataset
    (its ``label`` is in the JSON file as ``cross_domain``), else None."""

    checkpoint: str
    dataset: str
    split: str
    head: str
    head_options: Dict[str, Any]
    trained_head: str
    seed: int
    episodes_file: Optional[str]
    results: Dict[str, Dict[str, Any]]     # keyed "5" as in the JSON file; results[5] works too
    way: int
    n_episodes: int
    out: Path
    saved_episodes: Dict[int, Path]
    cross_domain: Optional[CrossDomain] = None

    def payload(self) -> Dict[str, Any]:
        """The content of the results JSON file."""
        return {"checkpoint": self.checkpoint, "dataset": self.dataset, "split": self.split, "head": self.head,
                "head_options": self.head_options, "trained_head": self.trained_head, "seed": self.seed,
                "episodes_file": self.episodes_file,
                **(self.cross_domain.payload() if self.cross_domain else {}), "results": self.results}


def evaluate(config: EvalConfig) -> EvaluationResult:
    """Evaluate ``config.checkpoint`` on every shot of ``config.episodes``, write the
    results JSON and return them."""
    spec = config.episodes
    ck = load_checkpoint(config.checkpoint)
    cfg = ck["config"]
    ModelSpec.from_config(cfg, ck["path"])   # a configuration the model can be rebuilt from
    head_name, head_opts, head = swapped_head(cfg, config.head, config.lambda_ratio, config.solver,
                                              config.head_options)
    cross = config.dataset is not None and config.dataset != dataset_name(cfg.get("dataset", config.dataset))
    if config.out:
        out = Path(config.out)
    else:
        name = evaluation_file_name(
            ck["path"], head_name, head_opts, spec.split, spec.shots, spec.seed, spec.episodes_file,
            {"way": spec.way, "query": spec.query, "episodes": spec.n_episodes,
             "data_root": str(spec.data_root) if spec.data_root else None,
             "dataset": config.dataset if cross else None})
        if cross:   # eval_best_cross-cub_...: never mistaken for an in-domain result
            name = name.replace("eval_", f"eval_cross-{config.dataset}_", 1)
        out = Path(ck["path"]).parent / name
    check_output_file(out, "--out", force=config.force)   # before the work, not after it
    spec.check_save_paths(force=config.force)
    device = resolve_device(config.device)
    source, cross_domain = evaluation_source(ck, config.dataset, spec.data_root, spec.split)
    model = checkpoint_model(ck).to(device)
    if head is not None:
        head.to(device)
    sets = episode_sets(spec, cfg, source)
    results = {}
    for k, eps in sets.streams.items():
        results[str(k)] = evaluate_episodes(model, eps, device, head=head, progress=config.progress,
                                            desc=f"{k}-shot", total=len(eps)).summary()
    result = EvaluationResult(ck["path"], cross_domain.evaluated_on if cross_domain else cfg["dataset"], spec.split,
                              head_name, head_opts, cfg["head"], spec.seed,
                              str(spec.episodes_file) if spec.episodes_file else None, ShotResults(results), sets.way,
                              sets.n_episodes, out, sets.saved, cross_domain)
    text = json.dumps(result.payload(), indent=1) + "\n"
    try:
        atomic_write_text(out, text)
    except OSError as e:   # disk full after the whole evaluation: the results are not lost
        sys.stderr.write(text)
        raise OSError(e.errno, f"{e.strerror or e}; the results were printed above instead",
                      e.filename or str(out)) from None
    return result
