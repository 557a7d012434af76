"""Figures of the few-shot comparison (matplotlib, Agg backend, written atomically).

* :func:`plot_feature_usage` - the paper's feature-usage curve: for each model, the share
  of meta-test tasks in which feature j has a non-zero row of ``W_t``, sorted in
  decreasing order over j (x axis: feature rank, as a fraction of d).
* :func:`plot_accuracy_vs_sparsity` - mean accuracy (+- 95% CI) against the average
  fraction of features used per task.
* :func:`plot_disentanglement` - MCC against the true factors per representation, with
  its interval.
"""
from __future__ import annotations

import io
from typing import Dict, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from episodes.atomic import atomic_write_bytes  # noqa: E402

__all__ = ["plot_feature_usage", "plot_accuracy_vs_sparsity", "plot_disentanglement", "save_figure"]


def save_figure(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_feature_usage(curves: Dict[str, Sequence[float]], path, title: str = "Feature usage") -> None:
    """``curves[name]`` = per-feature share of tasks using it (any order; sorted here)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, share in curves.items():
        s = np.sort(np.asarray(share, dtype=float))[::-1]
        x = np.arange(1, s.size + 1) / max(s.size, 1)
        ax.plot(x, s, label=name, lw=1.8)
    ax.set_xlabel("features, sorted by usage (fraction of d)")
    ax.set_ylabel("share of tasks using the feature")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_accuracy_vs_sparsity(points: Sequence[Dict[str, float]], path, title: str = "Accuracy vs sparsity") -> None:
    """``points``: dicts with ``name``, ``features_used_fraction``, ``accuracy``, ``ci95`` (in [0, 1])."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in points:
        ax.errorbar(100 * p["features_used_fraction"], 100 * p["accuracy"], yerr=100 * p["ci95"], fmt="o",
                    capsize=3, label=p["name"])
    ax.set_xlabel("features used per task (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(0, 105)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_disentanglement(rows: Dict[str, Dict[str, float]], path, title: str = "Disentanglement") -> None:
    """``rows[name]`` with ``mcc`` and optionally ``mcc_ci95`` ``[lo, hi]``: one bar per
    representation, MCC against the true factors (1 = each factor read by one feature)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = list(rows)
    mcc = [rows[n]["mcc"] for n in names]
    lo = [rows[n]["mcc"] - rows[n].get("mcc_ci95", [rows[n]["mcc"]] * 2)[0] for n in names]
    hi = [rows[n].get("mcc_ci95", [rows[n]["mcc"]] * 2)[1] - rows[n]["mcc"] for n in names]
    colors = ["#4c72b0" if "sparse" in n else "#dd8452" if "svm" in n else "#999999" for n in names]
    ax.bar(range(len(names)), mcc, yerr=[lo, hi], capsize=4, color=colors)
    for i, v in enumerate(mcc):
        ax.text(i, v + 0.02, f"{v:.3f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(names)), names, fontsize=9)
    ax.set_ylabel("MCC vs true factors")
    ax.set_ylim(0, 1.08)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title)
    save_figure(fig, path)
