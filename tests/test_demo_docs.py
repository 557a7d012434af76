"""The demo output documented in docs/cli.md comes from the current code: rerun the demo and
compare its numbers with the documented table (tolerances allow for the thread count and the
platform's float rounding, not for a change of behaviour such as a new learning-rate schedule,
which moved MCC from 0.748 to 0.643 while the docs kept the old numbers)."""
import json
import re
from pathlib import Path

from metasparse.cli import main

ROOT = Path(__file__).resolve().parents[1]


def documented_rows():
    """{(head, task): (accuracy, features used, MCC)} of the results table in docs/cli.md's demo section."""
    text = (ROOT / "docs" / "cli.md").read_text()
    block = text[text.index("$ metasparse demo --out runs/demo --no-progress"):]
    block = block[:block.index("```")]
    rows = {}
    for line in block.splitlines():
        m = re.match(r"^(group-sparse-svm|svm)\s+(\d)-shot\s+([\d.]+) \+- [\d.]+\s+\S+(?: \+- [\d.]+)?\s+"
                     r"([\d.]+)\s+([\d.]+)\s+[\d.]+\s*$", line)
        if m:
            rows[(m.group(1), int(m.group(2)))] = (float(m.group(3)), float(m.group(4)), float(m.group(5)))
        m = re.match(r"^input x \(no learning\)\s+-\s+-\s+-\s+-\s+([\d.]+)", line)
        if m:
            rows[("input x (no learning)", 0)] = (None, None, float(m.group(1)))
    return rows


def test_documented_demo_output_is_what_the_demo_prints(tmp_path, capsys):
    rows = documented_rows()
    assert len(rows) == 5, rows
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "demo.json").read_text())
    dis = summary["disentanglement"]
    for (head, shot), (acc, used, mcc) in rows.items():
        assert abs(dis[head]["mcc"] - mcc) <= 0.02, (head, dis[head]["mcc"], mcc)
        if shot:
            r = next(r for r in summary["results"][str(shot)] if r["name"] == head)
            assert abs(100 * r["accuracy"] - acc) <= 1.0, (head, shot, r["accuracy"], acc)
            assert abs(100 * r["features_used_fraction"] - used) <= 2.0, (head, shot, r["features_used_fraction"], used)
    names = {Path(p).name for p in summary["files"].values()}
    assert {"disentanglement.png", "feature_usage_1shot.png", "accuracy_vs_sparsity_1shot.png"} <= names
    md = (out / "demo.md").read_text()
    assert "positive diff means the vanilla SVM is ahead" in md and "`disentanglement.png`" in md
    assert all(0 <= v["mcc_ci95"][0] <= v["mcc"] <= v["mcc_ci95"][1] <= 1 for v in dis.values())
