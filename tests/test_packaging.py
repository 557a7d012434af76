"""The built wheel ships every module of both packages (CI installs editable, which
would not notice a folder without ``__init__.py``)."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_every_module(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info/ next to the sources
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("metasparse", "episodes"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    wheel, = out.glob("metasparse-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for pkg in ("metasparse", "episodes")
                for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    assert expected, "no sources found"
    missing = sorted(expected - shipped)
    assert not missing, f"modules missing from the wheel: {missing}"
