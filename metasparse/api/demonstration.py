"""``demo(DemoConfig)``: group-sparse vs vanilla SVM head on the synthetic source, on CPU
(``metasparse demo``; a client of :func:`~metasparse.api.train` and
:func:`~metasparse.api.load_model`).

1. A synthetic few-shot world (docs/maths.md section 5) where the paper's assumptions
   hold: latent factors z in R^m, classes whose means use l of the m factors (random
   supports: they vary enough across classes), within-class noise 0.5, observations
   x = g(z) with an invertible mixing g (a random rotation: *linearly entangled* inputs).
2. Meta-train the same linear encoder f(x) = A x + b with unit-norm rows of A (so the
   encoder cannot rescale features against the head's penalty) twice (same seed, same
   initial A, same episodes; an MLP with no hidden layer, enough for a linear mixing and
   fast): once with the
   group-sparse SVM head (lambda1 = lambda_ratio * lambda_max per episode), once with
   the vanilla SVM head (lambda1 = 0, MetaOptNet's SVM-CS).
3. Meta-test both final models (``last.pt``: the demo is about the representation
   meta-training produces; ``best.pt`` by validation accuracy is kept as well) on identical
   episodes: accuracy +- 95% CI, paired difference, fraction of features each task uses.
4. Disentanglement of each learned representation f(x) against the ground truth z on the
   test split: MCC (mean |Pearson| after Hungarian matching) and linear R^2; the raw
   inputs x give the entangled baseline.

Writes ``OUT/{group-sparse-svm,svm}/`` (runs), ``OUT/compare.{json,md}``, the PNGs and
``OUT/demo.json`` / ``OUT/demo.md`` with the final table.

Files it did not create are never touched.  Before anything else the demo records what
it is about to write in ``OUT/.metasparse-demo.json`` (its ownership record).  A rerun into
the same ``OUT`` may replace exactly those paths (in its run directories only the files
training writes: ``config.json``, ``metrics.jsonl``, ``best.pt``, ``last.pt`` and their
temporary files; anything else there is left alone).  If one of the demo's output paths
already exists and the record does not list it (say ``OUT/svm`` is a run of yours), the
demo stops with a :class:`~metasparse.errors.ConfigError` before doing any work.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from episodes.sources.synthetic import make_synthetic_source

from ..engine.checkpoint import atomic_write_text
from ..engine.runlock import RunLock
from ..engine.compare import Entry, compare_entries, markdown_table, write_comparison
from ..engine.streams import FixedStream
from ..errors import ConfigError
from ..metrics import disentanglement as dis
from ..plots import plot_disentanglement
from .data import sample_fixed_episodes
from .model import load_model
from .report import text_table
from .train_config import TrainConfig
from .training import _RUN_TEMP_FILES, train

__all__ = ["DemoConfig", "demo", "DEMO_SOURCE", "demo_train_config"]

# the synthetic world of the demo: 24 factors, 2 per class, rotation mixing (x = L z, L orthogonal),
# within-class noise 0.5 (class means 1-2 away from 0 on their factors)
DEMO_SOURCE = {"n_factors": 24, "factors_per_class": 2, "mixing": "rotation", "examples_per_class": 60,
               "n_classes": [64, 16, 20], "noise_std": 0.5}


@dataclass
class DemoConfig:
    """The demo's options: output folder ``out``; ``epochs`` x ``batches_per_epoch`` of
    meta-training (default 10 x 50), ``episodes`` meta-test episodes per shot (default
    300), ``lambda_ratio`` of the group-sparse head (default 0.3), ``seed``, ``device``;
    ``quick``: a run of seconds (2 x 5 batches, 20 episodes, smaller data), for tests."""

    out: Union[str, Path] = "runs/demo"
    epochs: Optional[int] = None
    batches_per_epoch: Optional[int] = None
    episodes: Optional[int] = None
    lambda_ratio: Optional[float] = None
    seed: int = 0
    device: str = "cpu"
    quick: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        # checked here, not by `or` below: --epochs 0 used to run the default 10 epochs
        for flag, value in (("--epochs", self.epochs), ("--batches-per-epoch", self.batches_per_epoch),
                            ("--episodes", self.episodes)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{flag} must be an integer >= 1, got {value!r}")
        if self.lambda_ratio is not None and not (0 <= float(self.lambda_ratio) < float("inf")):
            raise ConfigError(f"--lambda-ratio must be a finite number >= 0, got {self.lambda_ratio!r}")


def demo_train_config(head: str, out: Path, *, epochs: int, batches: int, lambda_ratio: float, seed: int,
                      source: Dict[str, Any], val_episodes: int, device: str, progress: bool) -> TrainConfig:
    """The training run of the demo with ``head``: a linear encoder (an MLP without hidden
    layer) on the synthetic ``source``, Adam 2e-2, 5-way 5-shot episodes."""
    m = int(source["n_factors"])
    return TrainConfig(
        out=out, dataset="synthetic", source_options=dict(source), backbone="mlp",
        backbone_options={"in_dim": m, "out_dim": m, "hidden": [], "unit_rows": True}, head=head,
        lambda_ratio=lambda_ratio if head == "group-sparse-svm" else None,
        way=5, train_shot=5, query=10, episodes_per_batch=8, val_episodes=val_episodes, val_shot=5, val_query=15,
        epochs=epochs, batches_per_epoch=batches, optimizer="adam", lr=2e-2, weight_decay=0.0, seed=seed,
        checkpoint_every=0, log_every=10, device=device, progress=progress)


HEADS = ("group-sparse-svm", "svm")
MARKER = ".metasparse-demo.json"
# the top-level files the demo writes (write_comparison's and its own)
DEMO_FILES = ("demo.json", "demo.md", "compare.json", "compare.md", "feature_usage_1shot.png",
              "feature_usage_5shot.png", "accuracy_vs_sparsity_1shot.png", "accuracy_vs_sparsity_5shot.png",
              "disentanglement.png")
#: what the table's columns mean (demo.md)
EXPLANATION = """\
How to read it. **accuracy** is the mean over the meta-test episodes (+- 95% interval); both
models are tested on the same episodes. **diff** is the paired difference *row minus
group-sparse-svm* (so a positive diff means the vanilla SVM is ahead), with its 95% interval.
**features used** is the share of the learned features a task's classifier reads (a row of W
that is not zero). **MCC vs z** is how disentangled the learned representation is: each true
latent factor z_i is matched to one learned feature (Hungarian matching of the absolute
correlations) and the matched |correlations| are averaged: 1 means every factor is read off
one feature, up to scale; a rotation of the factors scores low. Its interval (the figure
`disentanglement.png`) is a bootstrap over the test examples. **linear R^2** is how well a
linear map of the representation predicts z (1: no information lost; it does not care about
rotations). The **input x** row scores the raw inputs, which are the factors entangled by a
random rotation: a model above it has disentangled, one at its level has not.
"""
# what training writes in a run directory (checkpoints are written through ``.NAME.*.tmp`` files)
RUN_FILES = ("config.json", "metrics.jsonl", "best.pt", "last.pt")
DEMO_LOCK = ".metasparse-demo.lock"


def _read_marker(out: Path) -> Optional[Dict[str, Any]]:
    path = out / MARKER
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--out {out}: {path} is not a readable demo record ({e}); remove it or choose "
                          f"another --out") from None
    if not (isinstance(record, dict) and record.get("created_by") == "metasparse demo"
            and isinstance(record.get("files"), list) and isinstance(record.get("run_dirs"), list)):
        raise ConfigError(f"--out {out}: {path} is not a metasparse demo record; choose another --out")
    return record


def claim_output(out: Path) -> Dict[str, Any]:
    """Check that the demo may write into ``out`` and record what it will write there.

    The demo's outputs are ``out/{group-sparse-svm,svm}/`` and :data:`DEMO_FILES`.  Each of
    them must be absent or listed in the ownership record ``out/.metasparse-demo.json``
    left by an earlier demo; otherwise :class:`ConfigError` (nothing is written).  In
    run directories the record lists, only training's own files (:data:`RUN_FILES` and
    ``.*.tmp``) are deleted, so that training starts afresh.  Then the record is
    (re)written with every path this run will create.  Returns the record."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the demo's outputs")
    record = _read_marker(out) if out.is_dir() else None
    owned_files = set(record["files"]) if record else set()
    owned_dirs = set(record["run_dirs"]) if record else set()
    for name in DEMO_FILES:
        if (out / name).exists() and name not in owned_files:
            raise ConfigError(f"--out {out}: {out / name} exists and was not written by metasparse demo "
                              f"(not listed in {out / MARKER}); choose another --out")
    for head in HEADS:
        run_dir = out / head
        if run_dir.is_symlink():   # a planted link would let the demo write (and delete) elsewhere
            raise ConfigError(f"--out {out}: {run_dir} is a symbolic link; the demo writes its runs in real "
                              f"folders only; choose another --out")
        if run_dir.exists() and head not in owned_dirs:
            raise ConfigError(f"--out {out}: {run_dir} exists and was not created by metasparse demo "
                              f"(not listed in {out / MARKER}); choose another --out")
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"--out {out}: {run_dir} is a file; expected the demo's run folder")
    record = {"created_by": "metasparse demo", "files": list(DEMO_FILES), "run_dirs": list(HEADS)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / MARKER, json.dumps(record, indent=1) + "\n")
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    for head in HEADS:                        # a previous demo's runs: start afresh
        run_dir = out / head
        if not run_dir.is_dir():
            continue
        for f in run_dir.iterdir():               # training's own files only (a user's .x.tmp stays)
            if f.is_file() and not f.is_symlink() and (f.name in RUN_FILES or _RUN_TEMP_FILES.match(f.name)):
                f.unlink()
    return record


@torch.no_grad()
def _representation(model, source) -> np.ndarray:
    model.eval()
    return model.backbone(source.data).double().numpy()


def demo(config: DemoConfig) -> Dict[str, Any]:
    """Run the demo (it prints its progress and a final table); returns the summary
    written to ``OUT/demo.json``."""
    t0 = time.time()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the demo's outputs")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # held for the whole demo, taken before anything is deleted: a second demo into the same
    # --out stops here instead of removing the first one's live run files
    try:
        lock = RunLock(out, name=DEMO_LOCK, what="demo").acquire()
    except BaseException:
        if created:
            out.rmdir()
        raise
    try:
        return _demo_locked(config, out, t0)
    finally:
        lock.release()
        if created and out.is_dir() and not any(out.iterdir()):   # refused before any work
            out.rmdir()


def _demo_locked(config: DemoConfig, out: Path, t0: float) -> Dict[str, Any]:
    claim_output(out)                        # before any work: refuses outputs it did not create
    quick = config.quick
    epochs = config.epochs if config.epochs is not None else (2 if quick else 10)
    batches = config.batches_per_epoch if config.batches_per_epoch is not None else (5 if quick else 50)
    n_test = config.episodes if config.episodes is not None else (20 if quick else 300)
    ratio = 0.3 if config.lambda_ratio is None else config.lambda_ratio
    source = dict(DEMO_SOURCE)
    if quick:
        source.update(examples_per_class=30)
    print(f"metasparse demo: synthetic world with {source['n_factors']} latent factors ({source['factors_per_class']} "
          f"per class, within-class noise {source.get('noise_std', 1.0)}), {source['mixing']} mixing; a linear encoder "
          f"(unit-norm rows) meta-trained with the group-sparse SVM head "
          f"(lambda/lambda_max = {ratio}) and with the vanilla SVM head; {epochs} epochs x {batches} batches of 8 "
          f"5-way 5-shot episodes each.")
    runs = {}
    for head in HEADS:
        run_dir = out / head
        print(f"\n== meta-training with the {head} head -> {run_dir}")
        train(demo_train_config(head, run_dir, epochs=epochs, batches=batches, lambda_ratio=ratio, seed=config.seed,
                                source=source, val_episodes=10 if quick else 50, device=config.device,
                                progress=config.progress))
        runs[head] = run_dir
    device = torch.device(config.device if config.device != "auto" else "cpu")
    test = make_synthetic_source("test", seed=0, **source)
    entries = []
    models = {}
    for head, run_dir in runs.items():
        model, ck = load_model(run_dir / "last.pt", device)   # the representation at the end of meta-training
        models[head] = model
        entries.append(Entry(head, model, None, {"checkpoint": ck["path"], "head": head,
                                                 "head_options": ck["config"]["head_options"]}))
    sets = {k: FixedStream(sample_fixed_episodes(test, 5, k, 15, n_test, config.seed + 7919 * k), test, 16)
            for k in (1, 5)}
    print(f"\n== meta-testing both models on the same {n_test} test episodes per shot")
    result = compare_entries(entries, sets, device, progress=config.progress)
    z = test.latents.double().numpy()
    x = test.data.double().numpy()
    disent = {"input x (no learning)": {"mcc": dis.mean_corr_coef(z, x), "mcc_ci95": dis.mcc_interval(z, x),
                                        "r2": dis.linear_r2(z, x)}}
    for head, model in models.items():
        f = _representation(model, test)
        disent[head] = {"mcc": dis.mean_corr_coef(z, f), "mcc_ci95": dis.mcc_interval(z, f),
                        "r2": dis.linear_r2(z, f)}
    paths = write_comparison(result, out, extra={"disentanglement": disent, "source": source})
    plot_disentanglement({k: disent[k] for k in (*models, "input x (no learning)")}, out / "disentanglement.png",
                         title="Disentanglement of the learned representation (95% bootstrap interval)")
    paths["disentanglement"] = str(out / "disentanglement.png")
    rows = []
    for shot, rs in result["shots"].items():
        for r in rs:
            p = r["paired_vs_reference"]
            rows.append([r["name"], f"{shot}-shot", f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f}",
                         "-" if p is None else f"{100 * p['mean_diff']:+.2f} +- {100 * p['ci95']:.2f}",
                         f"{100 * r['features_used_fraction']:.1f}",
                         f"{disent[r['name']]['mcc']:.3f}", f"{disent[r['name']]['r2']:.3f}"])
    rows.append(["input x (no learning)", "-", "-", "-", "-", f"{disent['input x (no learning)']['mcc']:.3f}",
                 f"{disent['input x (no learning)']['r2']:.3f}"])
    print("\n== results (identical meta-test episodes; diff = paired difference to group-sparse-svm)")
    table = text_table(rows, ["head", "task", "accuracy (%)", "diff (%)", "features used (%)", "MCC vs z",
                              "linear R^2"])
    print(table)
    elapsed = time.time() - t0
    summary = {"elapsed_s": round(elapsed, 1), "epochs": epochs, "batches_per_epoch": batches,
               "lambda_ratio": ratio, "episodes": n_test, "disentanglement": disent,
               "results": {shot: [{k: v for k, v in r.items() if k not in ("feature_usage", "per_episode_accuracy")}
                                  for r in rs] for shot, rs in result["shots"].items()},
               "files": paths}
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=1) + "\n")
    figures = [paths[k] for k in sorted(paths) if str(paths[k]).endswith(".png")]
    mcc_lines = "\n".join(f"- {name}: MCC {d['mcc']:.3f} (95% interval {d['mcc_ci95'][0]:.3f}-{d['mcc_ci95'][1]:.3f})"
                          for name, d in disent.items())
    atomic_write_text(out / "demo.md", "# metasparse demo\n\n```\n" + table + "\n```\n\n" + EXPLANATION
                      + "\n" + mcc_lines + "\n\nFigures: " + ", ".join(f"`{Path(f).name}`" for f in figures)
                      + "\n\n" + markdown_table(result))
    print(f"\nfigures: {', '.join(figures)}")
    print(f"demo finished in {elapsed:.0f} s; summary in {out / 'demo.md'}")
    return summary
