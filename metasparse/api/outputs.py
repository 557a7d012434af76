"""Where ``evaluate`` and ``compare`` write, checked before any work starts.

A meta-test can take hours; its results must not be lost at the last step because the
output path is a folder, lies under a file, or is not writable, and an earlier result
must not be replaced silently. :func:`check_output_file` / :func:`check_output_dir` raise
a one-line :class:`~metasparse.errors.ConfigError` naming the flag and the path before
the work; nothing is created by the check. :func:`evaluation_file_name` is the default
name of ``evaluate``'s results: it encodes what was evaluated, so evaluations that differ
(checkpoint file, head, lambda, split, shots, seed, episodes file, other options) never
share a file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..errors import ConfigError

__all__ = ["check_output_file", "check_output_dir", "check_new_folder", "evaluation_file_name"]


def _check_parent_writable(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder (the missing
    ones are created at write time)."""
    parent = path.parent
    while not parent.exists() and not parent.is_symlink():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the folder {parent} is not writable; choose another {flag}")


def check_new_folder(path, expected: str, flag: str = "--out") -> Path:
    """``path`` as a :class:`Path` after checking that it is a folder or can become one:
    not ``''``, not a file, and its nearest existing ancestor a folder.  ``expected`` says
    what the folder is for (in the error message)."""
    path = Path(path)
    if str(path).strip() == "":
        raise ConfigError(f"{flag} '': expected {expected}")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, expected {expected}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return path


def check_output_file(path, flag: str = "--out", force: bool = False) -> Path:
    """``path`` as a :class:`Path` after checking that a result file can be written there
    (not a folder, under a writable folder; an existing file only with ``force``)."""
    path = Path(path)
    if str(path) in ("", "."):
        raise ConfigError(f"{flag}: expected a file path, got {str(path)!r}")
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; expected the path of a results file")
    if path.exists() or path.is_symlink():
        if not force:
            raise ConfigError(f"{flag} {path} already holds a result; pass --force to overwrite it or choose "
                              f"another {flag}")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: the folder {path.parent} is not writable")
        return path
    _check_parent_writable(path, flag)
    return path


def check_output_dir(path, files: Sequence[str], flag: str = "--out", force: bool = False) -> Path:
    """``path`` as a :class:`Path` after checking that ``files`` can be written into the
    folder ``path`` (not a file, writable; ``files`` already there only with ``force``)."""
    path = Path(path)
    if str(path) == "":
        raise ConfigError(f"{flag}: expected a folder, got ''")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; expected a folder for the results")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: the folder is not writable; choose another {flag}")
        existing = [f for f in files if (path / f).exists()]
        if existing and not force:
            raise ConfigError(f"{flag} {path} already holds results ({existing[0]}); pass --force to overwrite them "
                              f"or choose another {flag}")
        return path
    _check_parent_writable(path / "x", flag)
    return path


def _tag(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def evaluation_file_name(checkpoint: str, head: str, head_options: Mapping[str, Any], split: str,
                         shots: Optional[Sequence[int]], seed: int, episodes_file=None,
                         other: Optional[Mapping[str, Any]] = None) -> str:
    """``eval_{checkpoint stem}_{head}[_r{lambda_ratio}|_l1{lambda1}]_{split}_{shots}shot_seed{seed}[_{hash}].json``,
    or ``..._{split}_file-{episodes file stem}[_{hash}].json``. ``hash`` (8 hex digits) covers
    what the readable part leaves out: the other head options, ``other`` (way, query,
    number of episodes, data root...) and the episodes file's full path."""
    opts = dict(head_options or {})
    parts = [f"eval_{Path(checkpoint).stem}", head]
    if "lambda_ratio" in opts:
        parts.append(f"r{_tag(opts.pop('lambda_ratio'))}")
    elif "lambda1" in opts:
        parts.append(f"l1{_tag(opts.pop('lambda1'))}")
    parts.append(split)
    rest = {"head_options": opts, **{k: v for k, v in (other or {}).items() if v is not None}}
    if episodes_file:
        parts.append(f"file-{Path(episodes_file).stem}")
        rest["episodes_file"] = str(Path(episodes_file).resolve())
    else:
        parts += [f"{'-'.join(str(k) for k in (shots or (1, 5)))}shot", f"seed{seed}"]
    if any(v not in (None, {}) for v in rest.values()):
        digest = hashlib.sha1(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:8]
        parts.append(digest)
    return "_".join(parts) + ".json"
