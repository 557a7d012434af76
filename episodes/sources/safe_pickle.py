"""Restricted unpickling of dataset files.

Dataset pickles (MetaOptNet, learn2learn caches, the CIFAR-100 archive) only ever
hold numpy arrays, numpy dtypes/scalars and plain Python containers.  A pickle can
however name *any* importable callable (``os.system``, ``subprocess.Popen`` ...) and
``pickle.load`` would call it.  :class:`RestrictedUnpickler` resolves globals from an
explicit allow-list only, so loading a dataset file can never run code: anything else
raises :class:`UnsafePickleError` before a single call is made.

Python 2 pickles store byte strings as Python 2 ``str``; Python 3 can only decode the
raw array buffers inside them with ``encoding="latin1"``.  :func:`load_pickle` first
tries the default (ASCII) decoding and falls back to latin1 on ``UnicodeDecodeError``
(the approach MetaOptNet's own loader uses).
"""
from __future__ import annotations

import collections
import importlib
import io
import os
import pickle
import warnings
from typing import Any, Optional

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "load_pickle", "loads_pickle", "ALLOWED_GLOBALS"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list."""


# (module, name) pairs a dataset pickle may reference.  numpy moved ``numpy.core`` to
# ``numpy._core`` in 2.0; both spellings are accepted and resolved to whichever exists.
_NUMPY_NAMES = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
}
ALLOWED_GLOBALS = frozenset(
    {(f"numpy.{core}.{sub}", name) for core in ("core", "_core") for sub, name in _NUMPY_NAMES}
    | {("numpy", "ndarray"), ("numpy", "dtype"),
       ("numpy.core.multiarray", "ndarray"), ("numpy._core.multiarray", "ndarray"),
       ("numpy.core.multiarray", "dtype"), ("numpy._core.multiarray", "dtype"),
       ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
       ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
       ("__builtin__", "list"), ("__builtin__", "dict"), ("__builtin__", "tuple"),
       ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "bytearray"),
       ("__builtin__", "complex"),
       ("collections", "OrderedDict"), ("collections", "defaultdict"),
       # Python 3 writes ``bytes`` at protocol < 3 as _codecs.encode(str, "latin1"): a pure function;
       # the empty ``b''`` (e.g. the buffer of a zero-length array) as ``bytes()``.
       ("_codecs", "encode"), ("builtins", "bytes"), ("__builtin__", "bytes")}
)
# defaultdict is allowed only with a plain type as factory (checked below: its
# argument is itself resolved through find_class, so it can only be an allowed global).


def _byte_string(kind):
    """``bytes`` / ``bytearray`` as a pickle may call them: from bytes-like data or a
    (str, encoding) pair, never from a size (``bytes(10**12)`` would allocate it)."""
    def make(*args):
        if args and (isinstance(args[0], int) or len(args) > 2):
            raise UnsafePickleError(f"refusing {kind.__name__}{args!r}: a dataset pickle builds byte strings "
                                    f"from data, not from a size")
        return kind(*args)
    make.__name__ = kind.__name__
    return make


def _resolve(module: str, name: str) -> Any:
    """Import an allowed global, mapping numpy.core <-> numpy._core to what is installed."""
    if module.startswith("numpy"):
        import numpy as np
        if module == "numpy":
            return getattr(np, name)
        sub = module.split(".")[-1]
        for core in ("_core", "core"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mod = importlib.import_module(f"numpy.{core}.{sub}")
                return getattr(mod, name)
            except (ImportError, AttributeError):
                continue
        raise UnsafePickleError(f"cannot resolve allowed numpy global {module}.{name}")
    if module in ("builtins", "__builtin__"):
        import builtins
        if name in ("bytes", "bytearray"):
            return _byte_string(getattr(builtins, name))
        return getattr(builtins, name)
    if module == "collections":
        return getattr(collections, name)
    if module == "_codecs":
        import _codecs
        return getattr(_codecs, name)
    raise UnsafePickleError(f"global {module}.{name} is not allowed")  # pragma: no cover


def _array_bytes(shape, dtype) -> int:
    import numpy as np
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = 1
    for s in shape:
        n *= max(int(s), 0)
    return n * np.dtype(dtype if dtype is not None else np.float64).itemsize


class _NdarrayRef:
    """What a pickle gets for ``numpy.ndarray``: numpy's own pickles only pass it to
    ``_reconstruct`` (with shape ``(0,)``, the data coming later from the file); calling
    it allocates the array it names, so its size is checked first."""

    def __init__(self, limit: int, source: str):
        self.limit, self.source = limit, source

    def __call__(self, shape, dtype=None, *args, **kwargs):
        import numpy as np
        _check_size(self, shape, dtype)
        return np.ndarray(shape, dtype, *args, **kwargs)


def _check_size(ref, shape, dtype) -> None:
    try:
        nbytes = _array_bytes(shape, dtype)
    except (TypeError, ValueError):
        return                          # numpy itself refuses such arguments
    if nbytes > ref.limit:
        raise UnsafePickleError(f"{ref.source}: refusing to allocate an array of {nbytes / 2 ** 30:.3g} GiB "
                                f"declared by a file of {ref.limit - 2 ** 20} bytes (an array's data must be "
                                f"in the file)")


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` only admits :data:`ALLOWED_GLOBALS`.

    ``size``: the pickle's size in bytes.  An array allocated from a declared shape
    (``numpy.ndarray(shape)``, ``_reconstruct``) may not exceed it (plus 1 MiB): a
    legitimate array's data are in the file, so a 131-byte pickle cannot ask for 2^40
    bytes."""

    def __init__(self, file, *, source: str = "<pickle>", size: Optional[int] = None, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source
        self._ndarray = _NdarrayRef((size if size is not None else 2 ** 40) + 2 ** 20, source)

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global '{module}.{name}' "
                f"(dataset pickles may only contain numpy arrays/dtypes and plain containers)")
        if name == "ndarray":
            return self._ndarray
        if name == "_reconstruct":
            real, ref = _resolve(module, name), self._ndarray

            def _reconstruct(subtype, shape, dtype):
                import numpy as np
                if subtype is ref:
                    subtype = np.ndarray
                _check_size(ref, shape, dtype if not isinstance(dtype, (bytes, str)) else np.uint8)
                return real(subtype, shape, dtype)
            return _reconstruct
        return _resolve(module, name)

    def persistent_load(self, pid):  # pragma: no cover - dataset pickles have none
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed")


def _load(f, source: str, encoding: str, size: Optional[int] = None) -> Any:
    return RestrictedUnpickler(f, source=source, encoding=encoding, size=size).load()


def load_pickle(path: "str | os.PathLike") -> Any:
    """Load a dataset pickle safely (allow-listed globals; latin1 fallback for Python 2 files).

    Raises FileNotFoundError for a missing file, :class:`UnsafePickleError` for a pickle
    naming a forbidden global, and ValueError for a file that is not a pickle.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            try:
                return _load(f, path, "ASCII", size)
            except UnicodeDecodeError:
                f.seek(0)
                return _load(f, path, "latin1", size)
    except UnsafePickleError as e:
        if not str(e).startswith(path):
            raise UnsafePickleError(f"{path}: {e}") from None
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path}: not a readable dataset pickle ({type(e).__name__}: {e})") from None


def loads_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Like :func:`load_pickle` for an in-memory byte string (e.g. a member of a tar archive)."""
    try:
        try:
            return _load(io.BytesIO(data), source, "ASCII", len(data))
        except UnicodeDecodeError:
            return _load(io.BytesIO(data), source, "latin1", len(data))
    except UnsafePickleError as e:
        if not str(e).startswith(source):
            raise UnsafePickleError(f"{source}: {e}") from None
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{source}: not a readable dataset pickle ({type(e).__name__}: {e})") from None
