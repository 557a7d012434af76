"""Print a run's meta-test accuracies next to MetaOptNet's published ones, in one table.

    python scripts/reference_table.py DATASET OUT_DIR RUN [RUN ...]

reads ``OUT_DIR/RUN/test.json`` (``metasparse evaluate`` results with 1- and 5-shot) for each
run and the published table of ``docs/reference_numbers.md`` (the one source of those
numbers), and prints, per head, ``published`` and ``this run`` side by side (mean +- 95% CI
in %, as both report it). The runs ``protonet``, ``ridge`` and ``svm`` are set beside
MetaOptNet's ProtoNet, MetaOptNet-RR and MetaOptNet-SVM rows; other runs (the group-sparse
head) have no published number. A run without results yet prints ``-``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference_numbers.md"
COLUMNS = {"mini-imagenet": "miniImageNet", "tiered-imagenet": "tieredImageNet", "cifar-fs": "CIFAR-FS", "fc100": "FC100"}
ROWS = {"protonet": "ProtoNet", "ridge": "MetaOptNet-RR", "svm": "MetaOptNet-SVM"}


def published(dataset: str, path: Path = REFERENCE) -> Dict[str, Dict[str, str]]:
    """``{run name: {"1": "62.64 +- 0.61", "5": ...}}`` from the MetaOptNet table of ``path``."""
    lines = path.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("## MetaOptNet"))
    header = next(ln for ln in lines[start:] if ln.startswith("| head"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    out: Dict[str, Dict[str, str]] = {}
    for ln in lines[lines.index(header) + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for run, label in ROWS.items():
            if cells[0].startswith(label):
                out[run] = {k: cells[cols.index(f"{COLUMNS[dataset]} {k}-shot")] for k in ("1", "5")}
    return out


def ours(run_dir: Path) -> Tuple[Dict[str, str], Optional[float]]:
    """``({"1": "mean +- ci", "5": ...}, features used at 5-shot)`` of ``run_dir/test.json``."""
    f = run_dir / "test.json"
    if not f.is_file():
        return {}, None
    r = json.loads(f.read_text())["results"]
    acc = {k: f"{100 * r[k]['accuracy']:.2f} +- {100 * r[k]['ci95']:.2f}" for k in ("1", "5") if k in r}
    return acc, (r["5"]["features_used_fraction"] if "5" in r else None)


def table(dataset: str, out_dir: Path, runs: List[str]) -> str:
    pub = published(dataset)
    lines = [f"== {dataset}, 5-way, mean +- 95% CI (%) over the meta-test episodes; published: MetaOptNet "
             f"(Lee et al. 2019), ResNet-12 (docs/reference_numbers.md)",
             "| head | 1-shot published | 1-shot this run | 5-shot published | 5-shot this run | features used "
             "(5-shot) |", "|---|---|---|---|---|---|"]
    for run in runs:
        acc, used = ours(out_dir / run)
        p = pub.get(run, {})
        lines.append(f"| {run} | {p.get('1', '-')} | {acc.get('1', '-')} | {p.get('5', '-')} | {acc.get('5', '-')} "
                     f"| {'-' if used is None else f'{100 * used:.1f}%'} |")
    return "\n".join(lines)


def canonical(name: str) -> Optional[str]:
    """``miniImageNet``, ``CIFAR_FS``, ``fc-100``... -> the canonical dataset name (None if unknown)."""
    key = "".join(c for c in name.lower() if c not in "-_ ")
    return next((d for d in COLUMNS if d.replace("-", "") == key), None)


if __name__ == "__main__":
    dataset = canonical(sys.argv[1]) if len(sys.argv) > 1 else None
    if len(sys.argv) < 4 or dataset is None:
        sys.exit(f"usage: reference_table.py {{{'|'.join(COLUMNS)}}} OUT_DIR RUN [RUN ...]")
    print(table(dataset, Path(sys.argv[2]), sys.argv[3:]))
