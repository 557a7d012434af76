"""The README's "In Python" example runs as written (on a small CIFAR-FS fixture in the
MetaOptNet file format, with a narrow ResNet-12 so it stays fast)."""
import os
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_formats import write_metaoptnet_cifar  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example() -> str:
    text = README.read_text()
    section = text[text.index("## In Python"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block in the 'In Python' section"
    return match.group(1)


def test_readme_python_example_runs(tmp_path):
    write_metaoptnet_cifar(str(tmp_path), "cifar-fs", per_class=11)
    code = _python_example()
    assert '"data/cifar-fs"' in code
    code = code.replace('"data/cifar-fs"', repr(str(tmp_path)))
    # a narrow ResNet-12 keeps the test fast; the example's shapes scale with the widths
    code = code.replace("ResNet12(dropblock_size=2)", "ResNet12(dropblock_size=2, widths=(8, 8, 8, 16))")
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, str(README), "exec"), scope)
    logits, fit, batch = scope["logits"], scope["fit"], scope["batch"]
    assert batch.support.shape == (8, 25, 3, 32, 32) and batch.support.dtype == torch.float32
    assert logits.shape == (8, 30, 5)
    assert fit.weights.shape == (8, 16 * 2 * 2, 5)   # last width x 2 x 2 at 32x32 (no pooling)
    assert fit.active.shape == fit.weights.shape[:2]
    assert torch.isfinite(logits).all()
