"""The ``metasparse`` parser and entry point: dispatch to a command, report errors."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import MetasparseError
from ..heads import SolverConvergenceError
from . import compare, demo, evaluate, import_cmd, prepare, train

__all__ = ["build_parser", "main"]

COMMANDS = (train, evaluate, compare, prepare, demo, import_cmd)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="metasparse", description="Few-shot meta-learning with sparse heads "
                                 "(group-Lasso multiclass SVM vs MetaOptNet).")
    ap.add_argument("--version", action="version", version=f"metasparse {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return ap


def _error(command: str, e: BaseException) -> None:
    msg = str(e).strip() or type(e).__name__
    print(f"metasparse {command}: error: {msg.splitlines()[0]}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``metasparse ARGV``; returns the exit status (0; 2 bad input; 1 strict-solver stop; 130)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MetasparseError as e:
        _error(args.command, e)
        return 2
    except SolverConvergenceError as e:
        _error(args.command, e)
        return 1
    except KeyboardInterrupt:
        print(f"metasparse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
