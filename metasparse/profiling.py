r"""Counting what a piece of code asks of the device: ATen calls and host syncs.

On a GPU every ATen call is (at least) one kernel launch and every host sync (``.item()``,
``bool(tensor)``, ``int(tensor)``, ``nonzero``, boolean-mask indexing, ``.cpu()``,
``.tolist()``, the error checks of ``eigh`` / ``cholesky``) stalls the host until the
device has finished all queued work.  Both are properties of the code, not of the
device, so they can be counted on the CPU, where every machine can track them::

    from metasparse.profiling import count_ops
    with count_ops() as counts:
        logits = head(query, support, labels, 5)
        logits.sum().backward()
    print(counts.aten_calls, counts.host_syncs)
    print(counts.sync_sites.most_common(5))      # (op, file:line in metasparse), count

A ``torch.utils._python_dispatch.TorchDispatchMode`` sees every ATen call (the backward
pass included, when it runs inside the block); the Python-level syncs that never reach
ATen on a CPU tensor (``.cpu()``, ``.tolist()``, ``.numpy()``) are counted by wrapping
those methods for the duration of the block.
"""
from __future__ import annotations

import collections
import os
import threading
import traceback
from dataclasses import dataclass, field
from typing import Counter, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounts", "count_ops", "host_side", "SYNC_OPS"]

#: ATen ops that wait for the device: a scalar read back, output sizes known only from
#: the data, and the cuSOLVER info checks of the non-``_ex`` decompositions.
SYNC_OPS = frozenset({
    "aten._local_scalar_dense.default", "aten.nonzero.default", "aten.nonzero_static.default",
    "aten.masked_select.default", "aten._unique2.default", "aten.unique_dim.default",
    "aten.unique_consecutive.default", "aten._linalg_eigh.default", "aten._linalg_check_errors.default",
    "aten.linalg_eig.default", "aten._linalg_svd.default", "aten.linalg_lstsq.default",
    "aten.repeat_interleave.Tensor", "aten.equal.default",
})

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_HOST = threading.local()


class host_side:
    """Marks a block that works on data already copied to the host (the copy is the
    sync): its ATen calls are counted, none of them as a host sync."""

    def __enter__(self):
        _HOST.depth = getattr(_HOST, "depth", 0) + 1

    def __exit__(self, *exc):
        _HOST.depth -= 1
        return False


@dataclass
class OpCounts:
    """``aten_calls``: ATen operator calls; ``host_syncs``: those (and the Python-level
    reads) that wait for the device; ``by_op``: calls per operator; ``sync_sites``:
    syncs per ``(operator, first metasparse frame)``."""

    aten_calls: int = 0
    host_syncs: int = 0
    by_op: Counter = field(default_factory=collections.Counter)
    sync_sites: Counter = field(default_factory=collections.Counter)

    def as_dict(self) -> dict:
        return {"aten_calls": self.aten_calls, "host_syncs": self.host_syncs,
                "sync_sites": {f"{op} @ {site}": n for (op, site), n in self.sync_sites.most_common()}}


def _site() -> str:
    """``file:line`` of the innermost frame inside this package (else the innermost frame
    outside torch)."""
    frames = [fr for fr in traceback.extract_stack() if not fr.filename.endswith("profiling.py")]
    for fr in reversed(frames):
        path = os.path.abspath(fr.filename)
        if path.startswith(_PACKAGE):
            return f"{os.path.relpath(path, os.path.dirname(_PACKAGE))}:{fr.lineno}"
    for fr in reversed(frames):
        if "torch" not in fr.filename:
            return f"{os.path.basename(fr.filename)}:{fr.lineno}"
    return "?"


def _is_sync(func, args) -> bool:
    name = str(func)
    if name in SYNC_OPS:
        return True
    if name.startswith("aten.index.Tensor") or name.startswith("aten.index_put"):
        # indexing with a boolean mask computes nonzero() on the host's behalf
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices or ())
    return False


class _Mode(TorchDispatchMode):
    def __init__(self, counts: OpCounts, sites: bool):
        super().__init__()
        self.counts, self.sites = counts, sites

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        c = self.counts
        c.aten_calls += 1
        name = str(func)
        c.by_op[name] += 1
        if _is_sync(func, args) and not getattr(_HOST, "depth", 0):
            c.host_syncs += 1
            if self.sites:
                c.sync_sites[(name, _site())] += 1
        return func(*args, **(kwargs or {}))


class count_ops:
    """Context manager counting ATen calls and host syncs in its block (see the module
    docstring).  ``sites=False`` skips the stack walk of every sync (faster)."""

    _PY_SYNCS = ("cpu", "tolist", "numpy")

    def __init__(self, sites: bool = True):
        self.counts = OpCounts()
        self.sites = sites
        self._mode: Optional[_Mode] = None
        self._saved = {}

    def _wrap(self, name):
        original = getattr(torch.Tensor, name)
        counts, sites = self.counts, self.sites

        def wrapper(t, *args, **kwargs):
            counts.host_syncs += 1
            if sites:
                counts.sync_sites[(f"Tensor.{name}", _site())] += 1
            return original(t, *args, **kwargs)

        wrapper.__name__ = name
        return original, wrapper

    def __enter__(self) -> OpCounts:
        for name in self._PY_SYNCS:
            original, wrapper = self._wrap(name)
            self._saved[name] = original
            setattr(torch.Tensor, name, wrapper)
        self._mode = _Mode(self.counts, self.sites)
        self._mode.__enter__()
        return self.counts

    def __exit__(self, *exc):
        try:
            self._mode.__exit__(*exc)
        finally:
            for name, original in self._saved.items():
                setattr(torch.Tensor, name, original)
            self._saved.clear()
        return False
