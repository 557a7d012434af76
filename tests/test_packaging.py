"""The built wheel ships every module of both packages (CI installs editable, which
would not notice a folder without ``__init__.py``), and its metadata says what setup.cfg
means: numpy 1 or 2, the learn2learn / qpth baselines as the ``[l2l]`` extra (nothing in
the package imports them at import time), project URLs, the licence file and the Python
versions supported."""
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
L2L_MODULES = ("learn2learn", "qpth", "gym")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # build from a copy: setuptools writes build/ and *.egg-info/ next to the sources
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("metasparse", "episodes"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    path, = out.glob("metasparse-*.whl")
    return zipfile.ZipFile(path)


@pytest.fixture(scope="module")
def metadata(wheel):
    name, = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(name).decode())


def _requirements(metadata):
    """``{extra or None: {name: specifier text}}`` from the Requires-Dist lines."""
    out = {}
    for line in metadata.get_all("Requires-Dist"):
        req, _, marker = line.partition(";")
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(.*)", req)
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)[\"']", marker)
        out.setdefault(extra.group(1) if extra else None, {})[m.group(1).lower()] = m.group(2).strip()
    return out


def test_wheel_contains_every_module(wheel):
    shipped = set(wheel.namelist())
    expected = {p.relative_to(ROOT).as_posix() for pkg in ("metasparse", "episodes")
                for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    assert expected, "no sources found"
    missing = sorted(expected - shipped)
    assert not missing, f"modules missing from the wheel: {missing}"


def test_numpy_2_and_the_l2l_extra(metadata):
    reqs = _requirements(metadata)
    base = reqs[None]
    assert {"torch", "torchvision", "numpy", "cvxpy", "cvxpylayers"} <= set(base)
    assert "<" not in base["numpy"], f"numpy is capped: {base['numpy']}"                  # numpy 2 allowed
    assert "<" not in base["cvxpylayers"], f"cvxpylayers is capped: {base['cvxpylayers']}"  # 1.x with numpy 2
    assert not set(L2L_MODULES) & set(base), "learn2learn / qpth / gym must be the [l2l] extra only"
    assert set(metadata.get_all("Provides-Extra")) >= {"dev", "bench", "l2l"}
    assert set(reqs["l2l"]) == set(L2L_MODULES)


def test_project_urls_licence_and_python_versions(wheel, metadata):
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert set(urls) == {"Source", "Documentation", "Issue tracker"}
    assert all(u.startswith("https://") for u in urls.values())
    assert metadata["License-File"] == "LICENSE"
    licence, = [n for n in wheel.namelist() if ".dist-info/" in n and n.endswith("/LICENSE")]
    assert wheel.read(licence) == (ROOT / "LICENSE").read_bytes()
    lowest = int(re.fullmatch(r">=\s*3\.(\d+)", metadata["Requires-Python"]).group(1))
    minors = sorted(int(c.rsplit(".", 1)[1]) for c in metadata.get_all("Classifier")
                    if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert minors == list(range(lowest, minors[-1] + 1)), minors     # from python_requires, no gap
    assert sys.version_info.minor in minors                           # the Python running this is one


def test_every_module_imports_without_the_l2l_extra():
    """learn2learn, qpth and gym are imported lazily: with them unimportable, every module of
    both packages still imports (a subprocess, so this session's modules are untouched)."""
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {L2L_MODULES!r}:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import episodes, metasparse
        names = []
        for pkg in (episodes, metasparse):
            for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                if m.name.endswith(".__main__"):     # runs the command line
                    continue
                importlib.import_module(m.name)
                names.append(m.name)
        assert not [m for m in sys.modules if m.split(".")[0] in {L2L_MODULES!r}]
        print(len(names))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 50
