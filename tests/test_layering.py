"""The layers import downwards only (an AST scan of every import, function-level ones included):
``episodes`` never imports metasparse; the engine, solvers and heads never import the
command line or the API built on them; the API never imports the command line; the
command line reaches metasparse only through the API, the registry and the error types."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set:
    """Absolute names of the modules ``path`` imports (``from X import y`` gives X and X.y)."""
    module = _module(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def _files(*folders):
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_relative_imports_are_resolved():
    names = imported_modules(ROOT / "metasparse" / "cli" / "main.py")
    assert {"metasparse.errors", "metasparse.cli.train"} <= names
    assert "metasparse.heads.base" in imported_modules(ROOT / "metasparse" / "engine" / "train.py")
    assert "metasparse.api.data" in imported_modules(ROOT / "metasparse" / "api" / "training.py")


@pytest.mark.parametrize("path", _files("metasparse/engine", "metasparse/solvers", "metasparse/heads", "episodes"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_lower_layers_never_import_the_cli_or_the_api(path):
    bad = sorted(n for n in imported_modules(path)
                 if _within(n, "metasparse.cli") or _within(n, "metasparse.api"))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    if _module(path).startswith("episodes"):
        assert not any(_within(n, "metasparse") for n in imported_modules(path))


@pytest.mark.parametrize("path", _files("metasparse/api"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_api_never_imports_the_cli(path):
    assert not any(_within(n, "metasparse.cli") for n in imported_modules(path))


@pytest.mark.parametrize("path", _files("metasparse/cli"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_cli_is_a_thin_client(path):
    allowed = ("metasparse.cli", "metasparse.api", "metasparse.registry", "metasparse.options", "metasparse.errors",
               "metasparse.heads")
    bad = sorted(n for n in imported_modules(path) if _within(n, "metasparse")
                 and n not in ("metasparse", "metasparse.__version__")
                 and not any(_within(n, a) for a in allowed))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_command_line_starts_without_torch():
    """--help, --version and argument errors need no torch (2.4 s and 0.9 GB before)."""
    import subprocess
    import sys
    code = ("import sys; from metasparse.cli.main import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-1500:]
