"""Checkpoints: atomic writes, safe loads (``torch.load(weights_only=True)``), clear errors.

A checkpoint is a plain dict of tensors / numbers / strings / lists / dicts, so it loads
with ``weights_only=True`` (no code runs from the file):

    {"format": "metasparse-checkpoint", "version": 2,
     "config": {...},                      # the run's configuration (JSON-able): the one
                                           # specification the model is rebuilt from
     "model": state_dict,                  # FewShotModel: backbone.* and head.*
     "optimizer": state_dict | None,
     "progress": {"epoch", "step", "global_step", "epoch_sums"},   # next batch to run
     "best": {"epoch", "val_accuracy", "val_ci95"} | None,
     "rng": {"torch", "cuda", "numpy", "python"} | None,
     "tensor_crc32": int}                  # CRC-32 of every tensor above, checked on load

Version 1 checkpoints also held ``backbone`` / ``head`` (``{"name", "options"}``, copies of
``config``) and ``settings`` (a copy of ``config["settings"]``); :func:`load_checkpoint`
reads them and drops those copies, so both versions load the same way.
"""
from __future__ import annotations

import pickle
import random
import re
import zlib
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from episodes.atomic import atomic_write, atomic_write_bytes, atomic_write_text

from ..errors import CheckpointError, CheckpointNotFoundError

__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "tensor_checksum", "atomic_write_bytes",
           "atomic_write_text", "capture_rng", "restore_rng"]

FORMAT = "metasparse-checkpoint"
VERSION = 2
_REQUIRED = ("config", "model")
_V1_COPIES = ("backbone", "head", "settings")   # version 1 duplicates of parts of ``config``


def tensor_checksum(obj: Any) -> int:
    """CRC-32 of the bytes of every tensor in ``obj`` (nested dicts / lists / tuples, in
    their order). ``torch.load`` checks no checksum of its own: random bytes inside a
    tensor record would load as weights."""
    crc = 0

    def walk(x):
        nonlocal crc
        if isinstance(x, torch.Tensor):
            t = x.detach().reshape(-1).contiguous().cpu()
            crc = zlib.crc32(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"", crc)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(obj)
    return crc


def save_checkpoint(path, payload: Dict[str, Any]) -> None:
    """Write ``payload`` (plus format tags and the CRC-32 of its tensors,
    :func:`tensor_checksum`) to ``path`` atomically (temp file + os.replace)."""
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    payload = {k: v for k, v in payload.items() if k != "tensor_crc32"}
    data = {"format": FORMAT, "version": VERSION, **payload, "tensor_crc32": tensor_checksum(payload)}
    atomic_write(path, lambda f: torch.save(data, f))


def load_checkpoint(path, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a metasparse checkpoint safely; raise one clear error if it is not one.

    A run directory is accepted too (its ``best.pt``, else ``last.pt``). Raises
    :class:`~metasparse.errors.CheckpointNotFoundError` or
    :class:`~metasparse.errors.CheckpointError`; the returned dict has ``path`` (the file
    read) and no version 1 copies of ``config``."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointNotFoundError(f"{path}: run directory without best.pt or last.pt")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:   # a forbidden global: say which, never torch's advice to load it anyway
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it references {found.group(1)}" if found else "it holds objects other than tensors and plain data"
        raise CheckpointError(f"{path}: not a loadable metasparse checkpoint ({what}, which a metasparse "
                              f"checkpoint never holds; refused without running it)") from None
    except Exception as e:  # truncated files, not a torch file at all
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "weights_only" not in ln]
        first = f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
        raise CheckpointError(f"{path}: not a loadable metasparse checkpoint ({first})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a metasparse checkpoint (expected a dict with format={FORMAT!r}; "
                              f"MetaOptNet .pth files must be converted)")
    if int(data.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')} is newer than this metasparse "
                              f"({VERSION}); upgrade metasparse")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    if not isinstance(data["config"], dict):
        raise CheckpointError(f"{path}: checkpoint config is a {type(data['config']).__name__}, not a dict")
    recorded = data.pop("tensor_crc32", None)      # absent in checkpoints written before it existed
    if recorded is not None:
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        if tensor_checksum(body) != recorded:
            raise CheckpointError(f"{path}: damaged checkpoint (its tensors do not match the checksum recorded "
                                  f"when it was saved); use another checkpoint (last.pt / best.pt)")
    for key in _V1_COPIES:
        data.pop(key, None)
    data["path"] = str(path)
    return data


# ----------------------------------------------------------------------------- RNG
def capture_rng() -> Dict[str, Any]:
    """All RNG states as weights_only-loadable objects (tensors, ints, strings)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng(state: Optional[Dict[str, Any]]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
