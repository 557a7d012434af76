"""The errors metasparse raises for bad input, as opposed to bugs.

Every error caused by what the user gave (options, data files, checkpoints) is a
:class:`MetasparseError`; the command line prints its message as one line
``metasparse <command>: error: ...`` and exits with status 2. Any other exception is a
bug and keeps its traceback. Each class also derives from the builtin a caller would
expect (``ValueError``, or ``FileNotFoundError`` for a missing file)::

    MetasparseError
    +-- ConfigError                      options invalid, contradictory, or not fitting the run
    +-- DataError                        data files unreadable, or data not fitting the options
    |   +-- DataNotFoundError            a data file or folder does not exist
    +-- CheckpointError                  not a (loadable, current) checkpoint, or weights not fitting
        +-- CheckpointNotFoundError      the checkpoint file or run directory does not exist

A training step whose inner solver stops short of its tolerance under ``strict_solver``
raises :class:`SolverConvergenceError` (exit status 1), not one of these.
"""
from __future__ import annotations

__all__ = ["SolverConvergenceError", "MetasparseError", "ConfigError", "DataError", "DataNotFoundError", "CheckpointError",
           "CheckpointNotFoundError"]


class MetasparseError(Exception):
    """An error in the user's input; the message is one line that says what to change."""


class ConfigError(MetasparseError, ValueError):
    """Options that are invalid, contradict each other, or contradict the run being resumed."""


class DataError(MetasparseError, ValueError):
    """A data or episode file that cannot be read, or data that does not fit the options."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file, data folder or episode file that does not exist."""


class CheckpointError(MetasparseError, ValueError):
    """A file that is not a loadable metasparse checkpoint, or whose weights do not fit its config."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file (or run directory) that does not exist."""


class SolverConvergenceError(RuntimeError):
    """Raised instead of a ``SolverConvergenceWarning`` when training with ``strict_solver``:
    some episode's inner solve stopped short of its tolerance (exit status 1).  Defined
    here, re-exported by :mod:`metasparse.heads`, so the command line knows it without
    importing torch."""
