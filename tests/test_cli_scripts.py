"""The shell scripts parse, and the throughput script runs (tiny sizes, CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["gpu_check.sh", "reproduce_metaoptnet.sh"])
def test_shell_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_train_throughput_cpu_tiny(tmp_path):
    out = tmp_path / "tp.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_throughput.py"), "--device", "cpu",
                        "--image-size", "16", "--widths", "4", "4", "8", "8", "--shot", "2", "--query", "2",
                        "--episodes-per-batch", "2", "--batches", "1", "--warmup", "0", "--heads", "gs-svm",
                        "svm-dual", "--json", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [x["head"] for x in rows] == ["group-sparse-svm (dual)", "svm (dual)"]
    assert all(x["episodes_per_s"] > 0 for x in rows)


def test_gpu_check_dry_run(tmp_path):
    """The prepared GPU check runs end to end on the CPU at toy sizes (`metasparse train`
    on MetaOptNet pickles for the three heads, the backbone and heads parts), so device
    time is never spent on a broken script."""
    out = tmp_path / "gpu"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--shots", "5",
                        "--out", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert [row["head"] for row in report["train"]] == ["group-sparse-svm", "svm", "protonet"]
    assert all(row["episodes_per_s"] > 0 and 0 <= row["data_wait_fraction"] <= 1 for row in report["train"])
    assert all("head_share" in row for row in report["train"] if row["head"] != "protonet")
    assert report["backbone"][0]["gflop"] > 0 and report["heads"][0]["ms"]["group-sparse-svm"] > 0


def test_count_syncs_runs(tmp_path):
    out = tmp_path / "counts.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "count_syncs.py"), "--dim", "400", "--shots", "2",
                        "--episodes", "2", "--step-widths", "4", "4", "4", "4", "--image-size", "32",
                        "--json", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(x["kind"], x["head"]) for x in rows} == {(k, h) for k in ("head", "step")
                                                     for h in ("group-sparse-svm", "svm", "ridge", "protonet")}
    assert all(x["aten_calls"] > 0 and x["host_syncs"] >= 0 for x in rows)


def test_bench_metrics_runs(tmp_path):
    out = tmp_path / "metrics.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_metrics.py"), "--repeats", "1", "--scale", "0.1",
                        "--json", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {x["workload"] for x in rows} == {"identifiability", "figure4-quick", "figure4-full"}
    assert {x["metric"] for x in rows} >= {"mig", "sap", "modularity", "explicitness", "information_report"}
    assert [x["n"] for x in rows if x["metric"] == "mig"] == [200, 150, 400]
    assert all(x["cpu_s"] >= 0 for x in rows)
