"""The accuracy / sparsity trade-off of the group-sparse SVM head (the paper's appendix table
as a figure), from the rows of a comparison (``compare.json``).

For every checkpoint evaluated with the group-sparse head at several ``lambda_ratio``
``r = lambda / lambda_max`` (``metasparse compare --lambda-ratios ...``) and every shot
``K``, the series

    r  ->  accuracy_K(r) +- 1.96 std / sqrt(T),    f_K(r) +- 1.96 std / sqrt(T),

with ``f`` the fraction of the d features whose row of ``W_t`` is non-zero, averaged over
the ``T`` tasks. ``lambda = 0`` (``r = 0``, or the ``svm`` head of the same checkpoint,
which is the same head) is the reference: a horizontal line with its 95% band (a log
axis has no 0). Files (:func:`write_tradeoff`): ``tradeoff.json``, ``tradeoff.md`` and
``tradeoff.png`` (one row per shot; accuracy against ``lambda / lambda_max`` on the left,
against the fraction of features used on the right).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from .engine.checkpoint import atomic_write_text

__all__ = ["tradeoff_curves", "tradeoff_markdown", "plot_tradeoff", "write_tradeoff"]

_SPARSE = "group-sparse-svm"


def _series_label(row: Dict[str, Any]) -> str:
    """The checkpoint part of an entry name (``run:head(...)``), else the run folder."""
    name = row["name"]
    if ":" in name:
        return name.rsplit(":", 1)[0]
    return Path(row.get("checkpoint", "checkpoint")).parent.name or "checkpoint"


def _point(row: Dict[str, Any], ratio: float) -> Dict[str, Any]:
    return {"lambda_ratio": ratio, "accuracy": row["accuracy"], "ci95": row["ci95"],
            "features_used_fraction": row["features_used_fraction"],
            "features_used_ci95": row.get("features_used_ci95"), "episodes": row["episodes"], "name": row["name"]}


def tradeoff_curves(result: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """``{"shots": {K: {"series": [{"label", "points": [...]}]}}}`` sorted by ``lambda_ratio``
    (each series' ``reference`` is its ``lambda = 0`` point, when evaluated), or None when
    no checkpoint was evaluated with the group-sparse head at two or more lambda ratios."""
    out: Dict[str, Any] = {"shots": {}}
    for shot, rows in result["shots"].items():
        series: Dict[str, Dict[str, Any]] = {}
        for r in rows:
            label = _series_label(r)
            opts = r.get("head_options") or {}
            if r.get("head") == _SPARSE and "lambda_ratio" in opts and "lambda1" not in opts:
                ratio = float(opts["lambda_ratio"])
                s = series.setdefault(label, {"label": label, "points": [], "reference": None})
                if ratio == 0.0:
                    s["reference"] = _point(r, 0.0)
                else:
                    s["points"].append(_point(r, ratio))
        for r in rows:   # the svm head of a checkpoint is its lambda = 0 point, unless r = 0 was evaluated
            opts = r.get("head_options") or {}
            if r.get("head") == "svm" and _series_label(r) in series and not (set(opts) - {"C_reg", "lambda2",
                                                                                          "dual_reg"}):
                s = series[_series_label(r)]
                if s["reference"] is None:
                    s["reference"] = _point(r, 0.0)
        kept = [dict(s, points=sorted(s["points"], key=lambda p: p["lambda_ratio"]))
                for s in series.values() if len(s["points"]) + (s["reference"] is not None) >= 2]
        if kept:
            out["shots"][shot] = {"series": kept}
    return out if out["shots"] else None


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def tradeoff_markdown(tradeoff: Dict[str, Any]) -> str:
    """One table per shot: checkpoint, lambda/lambda_max, accuracy +- 95% CI, features used +- 95% CI."""
    lines: List[str] = []
    for shot, block in tradeoff["shots"].items():
        lines += [f"### {shot}-shot", "", "| checkpoint | lambda / lambda_max | accuracy (%) | features used (%) |",
                  "|---|---|---|---|"]
        for s in block["series"]:
            pts = ([s["reference"]] if s["reference"] else []) + s["points"]
            for p in pts:
                lines.append(f"| {s['label']} | {p['lambda_ratio']:g} | {_pct(p['accuracy'])} +- {_pct(p['ci95'])} | "
                             f"{_pct(p['features_used_fraction'])} +- {_pct(p['features_used_ci95'])} |")
        lines.append("")
    return "\n".join(lines)


def plot_tradeoff(tradeoff: Dict[str, Any], path, title: str = "Accuracy / sparsity trade-off") -> None:
    """The figure of :func:`tradeoff_curves`: a row per shot, accuracy (+- 95% CI) against
    ``lambda / lambda_max`` (log axis) and against the fraction of features used."""
    from .plots import plt, save_figure
    shots = list(tradeoff["shots"])
    fig, axes = plt.subplots(len(shots), 2, figsize=(11, 3.8 * len(shots)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, shot in zip(axes, shots):
        ax_l, ax_f = row
        for i, s in enumerate(tradeoff["shots"][shot]["series"]):
            c = colours[i % len(colours)]
            pts = s["points"]
            ref = s["reference"]
            if pts:
                x = [p["lambda_ratio"] for p in pts]
                y = [100 * p["accuracy"] for p in pts]
                e = [100 * p["ci95"] for p in pts]
                ax_l.errorbar(x, y, yerr=e, fmt="o-", color=c, capsize=3, label=s["label"])
            every = ([ref] if ref else []) + pts
            fx = [100 * p["features_used_fraction"] for p in every]
            fe = [100 * (p["features_used_ci95"] or 0.0) for p in every]
            ax_f.errorbar(fx, [100 * p["accuracy"] for p in every], xerr=fe, yerr=[100 * p["ci95"] for p in every],
                          fmt="o-", color=c, capsize=3, label=s["label"])
            for p in pts:
                ax_f.annotate(f"{p['lambda_ratio']:g}", (100 * p["features_used_fraction"], 100 * p["accuracy"]),
                              textcoords="offset points", xytext=(4, 4), fontsize=7, color=c)
            if ref:
                a, h = 100 * ref["accuracy"], 100 * ref["ci95"]
                ax_l.axhline(a, color=c, ls="--", lw=1, label=f"{s['label']}: lambda = 0 (SVM)")
                ax_l.axhspan(a - h, a + h, color=c, alpha=0.12)
        ax_l.set_xscale("log")
        ax_l.set_xlabel("lambda / lambda_max")
        ax_f.set_xlabel("features used per task (%)")
        ax_f.set_xlim(0, 105)
        for ax in row:
            ax.set_ylabel(f"{shot}-shot accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)


def write_tradeoff(result: Dict[str, Any], out_dir, extra: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Write ``tradeoff.json``, ``tradeoff.md`` and ``tradeoff.png`` into ``out_dir`` (nothing,
    and ``{}``, when the comparison has no lambda sweep); returns their paths."""
    tradeoff = tradeoff_curves(result)
    if tradeoff is None:
        return {}
    out_dir = Path(out_dir)
    paths = {"tradeoff_json": str(out_dir / "tradeoff.json"), "tradeoff_markdown": str(out_dir / "tradeoff.md"),
             "tradeoff_png": str(out_dir / "tradeoff.png")}
    atomic_write_text(paths["tradeoff_json"], json.dumps({**tradeoff, **(extra or {})}, indent=1) + "\n")
    atomic_write_text(paths["tradeoff_markdown"], "# Accuracy / sparsity trade-off of the group-sparse SVM head\n\n"
                      "Mean over the meta-test tasks +- 95% CI; lambda / lambda_max = 0 is the vanilla SVM.\n\n"
                      + tradeoff_markdown(tradeoff))
    plot_tradeoff(tradeoff, paths["tradeoff_png"])
    return paths
