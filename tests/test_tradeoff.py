"""The trade-off figure: ``compare --lambda-ratios`` writes accuracy +- 95% CI against
lambda/lambda_max and against the fraction of features used, per shot, as JSON, markdown, PNG."""
import json

import pytest

from metasparse.api import TrainConfig, train
from metasparse.cli import main
from metasparse.tradeoff import tradeoff_curves, tradeoff_markdown

SOURCE = {"n_factors": 6, "factors_per_class": 2, "n_classes": [6, 4, 4], "examples_per_class": 20}
EVAL = ["--episodes", "4", "--query", "2", "--no-progress", "--device", "cpu"]


def _row(name, head, opts, acc, used, ck="runs/a/best.pt"):
    return {"name": name, "head": head, "head_options": opts, "checkpoint": ck, "accuracy": acc, "ci95": 0.01,
            "features_used_fraction": used, "features_used_ci95": 0.02, "episodes": 10}


def test_curves_from_rows():
    rows = [_row("a:svm", "svm", {}, 0.70, 1.0),
            _row("a:group-sparse-svm(r=0.1)", "group-sparse-svm", {"lambda_ratio": 0.1}, 0.66, 0.2),
            _row("a:group-sparse-svm(r=0.01)", "group-sparse-svm", {"lambda_ratio": 0.01}, 0.71, 0.6),
            _row("b:group-sparse-svm(r=0.01)", "group-sparse-svm", {"lambda_ratio": 0.01}, 0.5, 0.5, "runs/b/best.pt"),
            _row("a:ridge", "ridge", {}, 0.69, 1.0)]
    t = tradeoff_curves({"shots": {"5": rows}})
    (series,) = t["shots"]["5"]["series"]        # b has a single point and no reference: no curve
    assert series["label"] == "a" and series["reference"]["name"] == "a:svm"
    assert [p["lambda_ratio"] for p in series["points"]] == [0.01, 0.1]
    md = tradeoff_markdown(t)
    assert "| a | 0 | 70.00 +- 1.00 | 100.00 +- 2.00 |" in md and "| a | 0.1 | 66.00 +- 1.00 | 20.00 +- 2.00 |" in md
    assert tradeoff_curves({"shots": {"5": rows[3:]}}) is None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(TrainConfig(out=tmp_path_factory.mktemp("trade") / "run", dataset="synthetic", source_options=SOURCE,
                             head="svm", epochs=1, batches_per_epoch=2, val_episodes=0, way=3, query=2,
                             episodes_per_batch=2, device="cpu", progress=False))


def test_compare_lambda_ratios_writes_the_tradeoff(run, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(run.run_dir / "best.pt"), str(run.run_dir / "last.pt"), "--lambda-ratios", "0.01",
                 "0.9", "--shot", "1", "2", "--out", str(out), *EVAL]) == 0
    t = json.loads((out / "tradeoff.json").read_text())
    assert set(t["shots"]) == {"1", "2"} and t["dataset"] == "synthetic"
    for shot in ("1", "2"):
        labels = [s["label"] for s in t["shots"][shot]["series"]]
        assert labels == ["run/best", "run/last"]
        for s in t["shots"][shot]["series"]:
            assert s["reference"]["features_used_fraction"] == 1.0          # the svm head uses every feature
            used = [p["features_used_fraction"] for p in s["points"]]
            assert [p["lambda_ratio"] for p in s["points"]] == [0.01, 0.9]
            assert used[0] >= used[-1] and used[-1] < 1.0
            assert all(0 <= p["ci95"] and 0 <= p["accuracy"] <= 1 for p in s["points"])
    rows = json.loads((out / "compare.json").read_text())["shots"]["1"]
    assert [r["name"] for r in rows][:2] == ["run/best:svm", "run/best:group-sparse-svm(r=0.01)"]
    assert "| lambda / lambda_max |" in (out / "tradeoff.md").read_text()
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tradeoff.png" in capsys.readouterr().out


def test_compare_outputs_are_one_consistent_set(run, tmp_path, capsys):
    """compare used to check only its .json/.md names (a user's PNG of a name it writes was
    overwritten), and --force without --lambda-ratios kept an earlier sweep's tradeoff files
    beside the new compare.json."""
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "feature_usage_1shot.png").write_bytes(b"the user's own figure")
    argv = ["compare", str(run.run_dir / "best.pt"), "--shot", "1", "--out", str(out), *EVAL]
    assert main(argv + ["--lambda-ratios", "0.01"]) == 2
    assert "already holds results (feature_usage_1shot.png)" in capsys.readouterr().err
    assert (out / "feature_usage_1shot.png").read_bytes() == b"the user's own figure"
    assert main(argv + ["--lambda-ratios", "0.01", "--force"]) == 0
    assert (out / "tradeoff.json").exists()
    (out / "notes.txt").write_text("mine")
    assert main(argv + ["--force"]) == 0                        # no sweep this time
    names = sorted(p.name for p in out.iterdir())
    assert names == ["accuracy_vs_sparsity_1shot.png", "compare.json", "compare.md", "feature_usage_1shot.png",
                     "notes.txt"]
    capsys.readouterr()
