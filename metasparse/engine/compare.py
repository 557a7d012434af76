"""Compare models / heads on identical meta-test episodes.

For entries ``e = 1..E`` evaluated on the same episodes ``t = 1..T``:

* accuracy ``mean_t a_e[t] +- 1.96 std / sqrt(T)`` (MetaOptNet form),
* paired difference to the reference entry (the first): ``d[t] = a_e[t] - a_1[t]``,
  ``mean(d) +- 1.96 std(d) / sqrt(T)``, paired t-test and Wilcoxon p-values,
* average fraction of features used per task, and the feature-usage curve
  ``u_e[j] = #{t : W_t[j, :] != 0} / T`` sorted decreasingly.

Embed once, compare many: the entries that share a model (one checkpoint with several
heads or ``lambda_ratio``) are evaluated on features embedded once per episode
(:func:`~metasparse.engine.evaluate.embed_episodes`; on the device within a memory bound,
else in host memory, else, said in one line, re-embedded per entry); the numbers are
those of evaluating each entry on its own.

Outputs (``write_comparison``): ``compare.json``, ``compare.md`` and, per shot,
``feature_usage_{K}shot.png`` and ``accuracy_vs_sparsity_{K}shot.png``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from ..metrics.accuracy import paired_difference
from .checkpoint import atomic_write_text
from .evaluate import EvalResult, embed_episodes, evaluate_episodes, evaluate_features

__all__ = ["Entry", "compare_entries", "write_comparison", "markdown_table"]


@dataclass
class Entry:
    name: str
    model: nn.Module                   # FewShotModel
    head: Optional[nn.Module] = None   # swapped head (None: the model's own)
    info: Optional[Dict[str, Any]] = None


def compare_entries(entries: List[Entry], episodes_by_shot: Dict[int, Iterable], device: torch.device,
                    progress: bool = True, ctx=None, feature_cache: Optional[int] = None,
                    log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Evaluate every entry on the episodes of every shot; ``feature_cache``: the bound
    (bytes) of the feature cache of the entries sharing a model (None: the default bound,
    0: no cache, embed per entry)."""
    if not entries:
        raise ValueError("compare: nothing to compare")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"compare: entry names must be unique, got {names}")
    groups: Dict[int, List[Entry]] = {}
    for e in entries:
        groups.setdefault(id(e.model), []).append(e)
    out: Dict[str, Any] = {"reference": entries[0].name, "shots": {}, "feature_cache": {}}
    for shot, episodes in episodes_by_shot.items():
        results: Dict[str, EvalResult] = {}
        total = len(episodes) if hasattr(episodes, "__len__") else None
        for group in groups.values():
            model = group[0].model
            cache = None
            if len(group) > 1 and total is not None and feature_cache != 0:
                cache = embed_episodes(model, episodes, device, ctx=ctx, max_bytes=feature_cache, progress=progress,
                                       desc=f"embed {shot}-shot", log=log)
            out["feature_cache"].setdefault(str(shot), []).append(
                None if cache is None else {"entries": len(group), "where": str(cache.where), "bytes": cache.nbytes})
            for e in group:
                if cache is not None:
                    results[e.name] = evaluate_features(e.head if e.head is not None else model.head, cache, device,
                                                        ctx=ctx, progress=progress, desc=f"{e.name} {shot}-shot")
                else:
                    results[e.name] = evaluate_episodes(model, episodes, device, head=e.head, ctx=ctx,
                                                        progress=progress, desc=f"{e.name} {shot}-shot", total=total)
            del cache
        ref = results[entries[0].name]
        rows = []
        for e in entries:
            r = results[e.name]
            if r.n_episodes != ref.n_episodes:
                raise ValueError("compare: entries were evaluated on different numbers of episodes")
            row = {"name": e.name, **(e.info or {}), **r.summary(),
                   "paired_vs_reference": None if e is entries[0] else paired_difference(r.accuracy, ref.accuracy),
                   "feature_usage": (r.feature_usage / r.n_episodes).tolist(),
                   "per_episode_accuracy": r.accuracy.tolist()}
            rows.append(row)
        out["shots"][str(shot)] = rows
    return out


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown_table(result: Dict[str, Any]) -> str:
    lines = [f"Reference for paired differences: `{result['reference']}`.", ""]
    for shot, rows in result["shots"].items():
        lines += [f"### {shot}-shot ({rows[0]['episodes']} episodes)", "",
                  "| model | accuracy (%) | diff vs ref (%) | paired t p | Wilcoxon p | features used (%) |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            p = r["paired_vs_reference"]
            diff = "-" if p is None else f"{100 * p['mean_diff']:+.2f} +- {100 * p['ci95']:.2f}"
            tp = "-" if p is None else f"{p['t_pvalue']:.3g}"
            wp = "-" if p is None else f"{p['wilcoxon_pvalue']:.3g}"
            lines.append(f"| {r['name']} | {_pct(r['accuracy'])} +- {_pct(r['ci95'])} | {diff} | {tp} | {wp} | "
                         f"{_pct(r['features_used_fraction'])} |")
        lines.append("")
    return "\n".join(lines)


def write_comparison(result: Dict[str, Any], out_dir, extra: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Write compare.json, compare.md and the PNG figures; return their paths."""
    from ..plots import plot_accuracy_vs_sparsity, plot_feature_usage

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out_dir / "compare.json"), "markdown": str(out_dir / "compare.md")}
    atomic_write_text(paths["json"], json.dumps({**result, **(extra or {})}, indent=1) + "\n")
    atomic_write_text(paths["markdown"], "# Comparison on identical meta-test episodes\n\n" + markdown_table(result))
    for shot, rows in result["shots"].items():
        fu = out_dir / f"feature_usage_{shot}shot.png"
        plot_feature_usage({r["name"]: r["feature_usage"] for r in rows}, fu,
                           title=f"Feature usage, {shot}-shot meta-test tasks")
        av = out_dir / f"accuracy_vs_sparsity_{shot}shot.png"
        plot_accuracy_vs_sparsity(rows, av, title=f"Accuracy vs features used, {shot}-shot")
        paths[f"feature_usage_{shot}shot"] = str(fu)
        paths[f"accuracy_vs_sparsity_{shot}shot"] = str(av)
    return paths
