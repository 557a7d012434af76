"""MetaOptNet's published accuracies are in docs/reference_numbers.md, and the reproduction
script's table sets a run's own results beside them."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import reference_table  # noqa: E402

# MetaOptNet-SVM, ResNet-12 (Lee et al., CVPR 2019, Tables 1 and 2): mean +- 95% CI, %
SVM = {"mini-imagenet": ("62.64 +- 0.61", "78.63 +- 0.46"), "cifar-fs": ("72.0 +- 0.7", "84.2 +- 0.5"),
       "fc100": ("41.1 +- 0.6", "55.5 +- 0.6"), "tiered-imagenet": ("65.99 +- 0.72", "81.56 +- 0.53")}


def test_published_svm_numbers_are_in_the_docs():
    for dataset, (one, five) in SVM.items():
        pub = reference_table.published(dataset)
        assert pub["svm"] == {"1": one, "5": five}
        assert set(pub) == {"protonet", "ridge", "svm"}


def test_table_sets_our_results_beside_the_published_ones(tmp_path):
    (tmp_path / "svm").mkdir()
    res = {"1": {"accuracy": 0.7123, "ci95": 0.0071, "features_used_fraction": 1.0},
           "5": {"accuracy": 0.8391, "ci95": 0.0049, "features_used_fraction": 1.0}}
    (tmp_path / "svm" / "test.json").write_text(json.dumps({"results": res}))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "reference_table.py"), "CIFAR_FS", str(tmp_path),
                        "svm", "gs-svm-0.01"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "| svm | 72.0 +- 0.7 | 71.23 +- 0.71 | 84.2 +- 0.5 | 83.91 +- 0.49 | 100.0% |" in lines
    assert "| gs-svm-0.01 | - | - | - | - | - |" in lines          # not run yet, no published number
