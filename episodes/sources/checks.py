"""Checks of a dataset file's content that every reader shares (numpy only: ``metasparse
prepare`` builds datasets without torch)."""
from __future__ import annotations

import numpy as np

__all__ = ["str_keys", "require_keys", "int_labels"]


def str_keys(obj, where: str) -> dict:
    """Return a dataset pickle's top-level dict with ``str`` keys.

    Python 2 pickles read with ``encoding="latin1"`` already give ``str`` keys; files
    read with ``encoding="bytes"`` elsewhere give ``bytes`` keys.  Both are accepted.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def require_keys(d: dict, keys, where: str, expected: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; expected {expected}; found keys {sorted(map(str, d))}")


def int_labels(labels, n: int, where: str, key: str) -> np.ndarray:
    """Validate a list/array of ``n`` integer labels."""
    try:
        out = np.asarray(labels)
    except Exception:  # pragma: no cover - defensive
        out = None
    if n == 0:
        raise ValueError(f"{where}: holds no images (an empty split)")
    if out is None or out.ndim != 1 or out.shape[0] != n or not np.issubdtype(out.dtype, np.integer):
        got = f"{type(labels).__name__} of length {len(labels) if hasattr(labels, '__len__') else '?'}"
        raise ValueError(f"{where}: '{key}' must be {n} integer labels (one per image); got {got}")
    return out.astype(np.int64)
