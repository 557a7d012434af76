"""Command line: ``metasparse train | evaluate | compare | prepare | demo`` (``docs/cli.md``).

One module per command, each with ``add_parser(subparsers)`` and ``run(args)``: ``run``
turns the flags into a configuration of :mod:`metasparse.api`, makes ONE call of the
API and prints the result (the API is imported when a command runs, so that ``--help``
loads only the registry). :func:`main` only dispatches and reports errors: a
:class:`~metasparse.errors.MetasparseError` (user input: missing files, contradictory
flags, a checkpoint that does not fit) ends with one line ``metasparse <command>: error:
...`` and exit status 2; a training step whose inner solver stopped short of its
tolerance under ``--strict-solver`` ends with such a line and exit status 1 (the run's
``last.pt`` stays resumable). Any other exception is a bug and keeps its traceback.
"""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
