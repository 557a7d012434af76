"""`metasparse demo --quick`: trains both heads on the synthetic source, compares them on the
same episodes and scores the learned representations against the ground-truth factors."""
import json

from metasparse.cli import main


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "demo.json").read_text())
    dis = summary["disentanglement"]
    assert set(dis) == {"group-sparse-svm", "svm", "input x (no learning)"}
    for v in dis.values():
        assert 0 <= v["mcc"] <= 1 and v["r2"] <= 1
    for shot in ("1", "5"):
        rows = {r["name"]: r for r in summary["results"][shot]}
        assert set(rows) == {"group-sparse-svm", "svm"}
        assert rows["svm"]["features_used_fraction"] == 1.0          # lambda1 = 0 uses every feature
        assert rows["group-sparse-svm"]["features_used_fraction"] < 1.0
        assert rows["svm"]["paired_vs_reference"]["n"] == rows["group-sparse-svm"]["episodes"]
    for f in ("compare.json", "compare.md", "demo.md", "feature_usage_5shot.png", "accuracy_vs_sparsity_5shot.png",
              "group-sparse-svm/best.pt", "svm/best.pt"):
        assert (out / f).is_file(), f
