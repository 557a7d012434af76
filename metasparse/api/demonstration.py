"""``metasparse demo``: group-sparse vs vanilla SVM head on the synthetic source, on CPU.

1. A synthetic few-shot world (brief paper.md section 5): latent factors z in R^m,
   classes whose means use l of the m factors, observations x = g(z) with an
   invertible mixing g (default: a random rotation, i.e. *linearly entangled* inputs).
2. Meta-train the same linear encoder f(x) = A x + b twice (same seed, same initial A,
   same episodes; an MLP with no hidden layer, enough for a linear mixing and fast): once with the
   group-sparse SVM head (lambda1 = lambda_ratio * lambda_max per episode), once with
   the vanilla SVM head (lambda1 = 0, MetaOptNet's SVM-CS).
3. Meta-test both final models (``last.pt``: the demo is about the representation meta-training
   produces; ``best.pt`` by validation accuracy is kept as well) on identical episodes: accuracy +- 95% CI, paired difference,
   fraction of features each task uses.
4. Disentanglement of each learned representation f(x) against the ground truth z on the
   test split: MCC (mean |Pearson| after Hungarian matching) and linear R^2; the raw
   inputs x give the entangled baseline.

Writes ``OUT/{group-sparse-svm,svm}/`` (runs), ``OUT/compare.{json,md}``, the PNGs and
``OUT/demo.json`` / ``OUT/demo.md`` with the final table.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from .checkpoint import atomic_write_text, load_checkpoint

__all__ = ["run_demo", "DEMO_SOURCE", "demo_config"]

# the synthetic world of the demo: 24 factors, 2 per class, rotation mixing (x = L z, L orthogonal)
DEMO_SOURCE = {"n_factors": 24, "factors_per_class": 2, "mixing": "rotation", "examples_per_class": 60,
               "n_classes": [64, 16, 20]}


def demo_config(head: str, *, epochs: int, batches: int, lambda_ratio: float, seed: int,
                source: Dict[str, Any]) -> Dict[str, Any]:
    from ..cli import resolve_train_config
    from types import SimpleNamespace
    m = int(source["n_factors"])
    args = SimpleNamespace(
        dataset="synthetic", data_root=None, source_options=json.dumps(source), backbone="mlp",
        backbone_options=json.dumps({"in_dim": m, "out_dim": m, "hidden": []}), head=head,
        lambda_ratio=lambda_ratio if head == "group-sparse-svm" else None, solver=None, head_options=None,
        way=5, train_shot=5, query=10, episodes_per_batch=8, val_episodes=50, val_shot=5, val_query=15,
        amp=False, head_dtype=None, epochs=epochs, batches_per_epoch=batches, optimizer="adam", lr=2e-2,
        weight_decay=0.0, label_smoothing=None, seed=seed, checkpoint_every=0, log_every=10)
    return resolve_train_config(args)


@torch.no_grad()
def _representation(model, source) -> np.ndarray:
    model.eval()
    return model.backbone(source.data).double().numpy()


def run_demo(args) -> Dict[str, Any]:
    from ..cli import _load_model, _print_table, run_training
    from ..metrics import disentanglement as dis
    from .compare import Entry, compare_entries, markdown_table, write_comparison
    from .streams import EvalEpisodes

    from episodes.sampler import EpisodeSampler
    from episodes.sources.synthetic import make_synthetic_source

    t0 = time.time()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    out = Path(args.out)
    quick = bool(getattr(args, "quick", False))
    epochs = args.epochs or (2 if quick else 10)
    batches = args.batches_per_epoch or (5 if quick else 50)
    n_test = args.episodes or (20 if quick else 300)
    ratio = 0.3 if args.lambda_ratio is None else args.lambda_ratio
    source = dict(DEMO_SOURCE)
    if quick:
        source.update(examples_per_class=30)
    progress = not args.no_progress
    print(f"metasparse demo: synthetic world with {source['n_factors']} latent factors ({source['factors_per_class']} "
          f"per class), {source['mixing']} mixing; a linear encoder meta-trained with the group-sparse SVM head "
          f"(lambda/lambda_max = {ratio}) and with the vanilla SVM head; {epochs} epochs x {batches} batches of 8 "
          f"5-way 5-shot episodes each.")
    runs = {}
    for head in ("group-sparse-svm", "svm"):
        cfg = demo_config(head, epochs=epochs, batches=batches, lambda_ratio=ratio, seed=args.seed, source=source)
        if quick:
            cfg["val_episodes"] = 10
        run_dir = out / head
        if (run_dir / "config.json").exists():  # a previous demo: start afresh
            for f in run_dir.iterdir():
                if f.is_file():
                    f.unlink()
        print(f"\n== meta-training with the {head} head -> {run_dir}")
        run_training(cfg, run_dir, device=args.device, progress=progress)
        runs[head] = run_dir
    device = torch.device(args.device if args.device != "auto" else "cpu")
    test = make_synthetic_source("test", seed=0, **source)
    entries = []
    models = {}
    for head, run_dir in runs.items():
        ck = load_checkpoint(run_dir / "last.pt")   # the representation at the end of meta-training
        model = _load_model(ck).to(device)
        models[head] = model
        entries.append(Entry(head, model, None, {"checkpoint": ck["path"], "head": head,
                                                 "head_options": ck["config"]["head_options"]}))
    sets = {k: EvalEpisodes(EpisodeSampler(test, 5, k, 15, 1, seed=args.seed + 7919 * k), n_test, 16) for k in (1, 5)}
    print(f"\n== meta-testing both models on the same {n_test} test episodes per shot")
    result = compare_entries(entries, sets, device, progress=progress)
    z = test.latents.double().numpy()
    disent = {"input x (no learning)": {"mcc": dis.mean_corr_coef(z, test.data.double().numpy()),
                                        "r2": dis.linear_r2(z, test.data.double().numpy())}}
    for head, model in models.items():
        f = _representation(model, test)
        disent[head] = {"mcc": dis.mean_corr_coef(z, f), "r2": dis.linear_r2(z, f)}
    paths = write_comparison(result, out, extra={"disentanglement": disent, "source": source})
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
    table = _print_table(rows, ["head", "task", "accuracy (%)", "diff (%)", "features used (%)", "MCC vs z",
                                "linear R^2"])
    elapsed = time.time() - t0
    summary = {"elapsed_s": round(elapsed, 1), "epochs": epochs, "batches_per_epoch": batches,
               "lambda_ratio": ratio, "episodes": n_test, "disentanglement": disent,
               "results": {shot: [{k: v for k, v in r.items() if k not in ("feature_usage", "per_episode_accuracy")}
                                  for r in rs] for shot, rs in result["shots"].items()},
               "files": paths}
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "demo.md", "# metasparse demo\n\n```\n" + table + "\n```\n\n" + markdown_table(result))
    print(f"\nfigures: {paths.get('feature_usage_5shot')}, {paths.get('accuracy_vs_sparsity_5shot')}")
    print(f"demo finished in {elapsed:.0f} s; summary in {out / 'demo.md'}")
    return summary
