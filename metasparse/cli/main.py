"""The ``metasparse`` parser and entry point: dispatch to a command, report errors."""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Optional, Sequence

from .. import __version__
from ..errors import MetasparseError, SolverConvergenceError
from . import compare, demo, evaluate, import_cmd, prepare, train

__all__ = ["build_parser", "main"]

COMMANDS = (train, evaluate, compare, prepare, demo, import_cmd)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``metasparse CMD: error: ...`` and exit status 2 (the
    usage is what ``--help`` is for); subcommand parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="metasparse", description="Few-shot meta-learning with sparse heads "
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
    """Run ``metasparse ARGV``; returns the exit status: 0; 2 for bad input (one line
    ``metasparse CMD: error: ...``: a :class:`~metasparse.errors.MetasparseError`, or a file
    system error on a named file); 1 for a ``--strict-solver`` stop, and for any other
    exception (a bug: its traceback, then a line saying so); 130 for Ctrl-C."""
    for stream in (sys.stdout, sys.stderr):
        # a path that is not valid in the output's encoding (a non-UTF-8 --out) is printed
        # escaped, not a UnicodeEncodeError after the work is done
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", "strict") == "strict":
            stream.reconfigure(errors="backslashreplace")
    try:   # plugins register their datasets, backbones and heads before the names are read
        from ..registry import load_plugins
        load_plugins()
    except MetasparseError as e:
        _error(" ".join(list(argv if argv is not None else sys.argv[1:])[:1]) or "", e)
        return 2
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
    except OSError as e:
        if e.filename is None:   # not about a file the user named: a bug
            return _bug(args.command)
        # a file system refusal (permissions, disk full, a path that is a file ...)
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
        _error(args.command, OSError(f"{where}: {e.strerror or type(e).__name__}"))
        return 2
    except Exception:
        return _bug(args.command)


def _bug(command: str) -> int:
    """An error that is not the user's: its traceback, then one line saying it is a bug."""
    traceback.print_exc()
    print(f"metasparse {command}: this is a bug in metasparse; please report it with the traceback above",
          file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
