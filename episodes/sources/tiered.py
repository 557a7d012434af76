"""tieredImageNet (Ren et al. 2018): 608 ImageNet classes, 84x84, split by superclass
(351 / 97 / 160 classes; 448,695 / 124,261 / 206,209 images).

Two on-disk formats are read (see docs/data.md), both with ``{split}_labels.pkl`` beside
the images (``split`` in train, val, test):

* MetaOptNet's ``{split}_images.npz``: ``np.savez`` archive whose member ``images`` is uint8
  (N, 84, 84, 3);
* learn2learn's / Ren et al.'s ``{split}_images_png.pkl``: a pickled list of PNG-encoded
  images, each a uint8 numpy array of the file's bytes (what ``cv2.imencode`` returns) or a
  byte string.

``{split}_labels.pkl`` is a pickled dict; its ``labels`` (one int per image, ids that do not
collide across splits, as MetaOptNet's files hold them) are the class ids, else
``label_specific`` (Ren et al.'s per-split ids 0..C-1), shifted by the split's offset
(train 0, val 351, test 448) so that ids of different splits never collide;
``label_specific_str`` names them.

**Nothing is loaded into memory.**  Decoded, the training split is 9.5 GB; the sources here
are :class:`~episodes.sources.base.LazyImageSource` s whose store reads exactly the images
an episode gathers, with ``os.pread`` (no memory map: mapped pages would count in the
process's resident memory as they are touched; read pages stay in the kernel's page cache,
which serves repeated reads):

* :class:`NpzImages`: ``np.savez`` stores its members uncompressed, so image ``i`` is the
  ``H*W*3`` bytes at ``offset + i*H*W*3``, where ``offset`` follows the member's zip local
  header and its ``.npy`` header (``numpy.lib.format``).  A compressed member
  (``np.savez_compressed``) is refused with a one-line error: re-save it with ``np.savez``.
* :class:`PngPickleImages`: one pass over the pickle (a restricted, pure-Python unpickler:
  the same allow-list of globals as :mod:`episodes.sources.safe_pickle`) records where each
  PNG's bytes lie in the file instead of reading them; an episode then reads and decodes
  (PIL) its own images, in the DataLoader worker that builds it.

Channel order: the npz files hold the images as Ren et al. wrote them with OpenCV (blue,
green, red planes), and MetaOptNet trains on them as stored.  The PNG files decode (PIL) to
red, green, blue; they are returned in the npz order (what ``cv2.imdecode`` gives, and how
Ren et al. built the npz from the PNGs), so both formats give the same tensors.
Normalisation constants are MetaOptNet's (those of miniImageNet, in the same slot order).
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .base import LazyImageSource, int_labels, require_keys, str_keys
from .miniimagenet import MINI_IMAGENET_MEAN, MINI_IMAGENET_STD
from .safe_pickle import ALLOWED_GLOBALS, UnsafePickleError, _byte_string, _resolve, load_pickle

__all__ = ["TIERED_MEAN", "TIERED_STD", "SPLIT_CLASS_OFFSET", "NPZ_FILE", "PNG_PICKLE_FILE", "LABELS_FILE",
           "NpzImages", "PngPickleImages", "find_tiered", "load_tiered", "expected_files"]

TIERED_MEAN = MINI_IMAGENET_MEAN
TIERED_STD = MINI_IMAGENET_STD
#: class id of Ren et al.'s ``label_specific`` 0 in each split (351 train, 97 val, 160 test classes)
SPLIT_CLASS_OFFSET = {"train": 0, "val": 351, "test": 448}
NPZ_FILE = "{split}_images.npz"
PNG_PICKLE_FILE = "{split}_images_png.pkl"
LABELS_FILE = "{split}_labels.pkl"


# -- reading bytes at an offset, once per process ----------------------------------------------
class _FileAt:
    """A read-only file descriptor opened lazily by each process that reads (a forked or
    unpickled copy opens its own), read with ``os.preadv`` / ``os.pread`` (no shared file position)."""

    def __init__(self, path: str):
        self.path = path
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), os.getpid()
        return self._fd

    def read_into(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the bytes at ``offset`` (ValueError if the file ends first)."""
        fd, done, n = self._descriptor(), 0, len(view)
        while done < n:
            if hasattr(os, "preadv"):
                got = os.preadv(fd, [view[done:]], offset + done)
            else:                                          # pragma: no cover - platforms without preadv
                chunk = os.pread(fd, n - done, offset + done)
                got = len(chunk)
                view[done:done + got] = chunk
            if got == 0:
                raise ValueError(f"{self.path}: the file ends at byte {offset + done}, inside an image "
                                 f"(truncated? expected {n} bytes at offset {offset})")
            done += got

    def read(self, offset: int, n: int) -> bytearray:
        buf = bytearray(n)
        self.read_into(memoryview(buf), offset)
        return buf

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:   # pragma: no cover
                pass


def _check_index(index: np.ndarray, n: int, where: str) -> np.ndarray:
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= n):
        bad = int(index[(index < 0) | (index >= n)][0])
        raise IndexError(f"{where}: image index {bad} outside 0..{n - 1}")
    return index


class _Store:
    """What both stores share: ``shape`` (n, C, H, W), ``dtype``, ``device``, ``len``, ``store[i]``."""

    dtype = torch.uint8
    device = torch.device("cpu")
    shape: torch.Size
    path: str

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, i) -> torch.Tensor:
        i = int(i)
        i = i + len(self) if i < 0 else i
        out = np.empty((1,) + tuple(self.shape[1:]), dtype=np.uint8)
        self.read_into(np.array([i], dtype=np.int64), out)
        return torch.from_numpy(out[0])

    def read_into(self, index: np.ndarray, out: np.ndarray) -> None:   # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, shape={tuple(self.shape)})"


# -- MetaOptNet's npz ----------------------------------------------------------------------------
def locate_npy_member(path: str, key: str = "images") -> Tuple[int, Tuple[int, ...], np.dtype]:
    """``(offset, shape, dtype)`` of the array ``key`` of the ``.npz`` file ``path``: where its
    data start in the file.  Reads only the zip directory and the two headers."""
    member = f"{key}.npy"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if member not in names:
                arrays = [n[:-4] if n.endswith(".npy") else n for n in names]
                raise ValueError(f"{path}: no array '{key}' (holds {arrays}); expected MetaOptNet's npz with "
                                 f"'images' uint8 (N, 84, 84, 3)")
            info = zf.getinfo(member)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not a readable .npz (zip) file ({e}); expected np.savez's archive "
                         f"with 'images' uint8 (N, 84, 84, 3)") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: '{key}' is compressed (np.savez_compressed), so it cannot be read image by "
                         f"image without decompressing all {info.file_size / 2 ** 30:.2f} GiB; re-save it once "
                         f"uncompressed: np.savez(out, {key}=np.load('{path}')['{key}'])")
    if info.flag_bits & 0x1:
        raise ValueError(f"{path}: '{key}' is encrypted; expected np.savez's plain archive")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: corrupt zip local header of '{member}'")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, SyntaxError, EOFError, struct.error) as e:
            raise ValueError(f"{path}: '{member}' is not a readable .npy array "
                             f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
        offset = f.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != offset - start + nbytes:
        raise ValueError(f"{path}: '{member}' holds {info.file_size} bytes, its header declares {tuple(shape)} "
                         f"{dtype} ({offset - start + nbytes} bytes with the header); a corrupt file")
    if os.path.getsize(path) < offset + nbytes:
        raise ValueError(f"{path}: the file ends before the data of '{member}' (truncated: "
                         f"{os.path.getsize(path)} of at least {offset + nbytes} bytes)")
    if fortran:
        raise ValueError(f"{path}: '{key}' is stored in Fortran order; expected a C-contiguous array (np.savez "
                         f"of np.ascontiguousarray)")
    return offset, tuple(int(s) for s in shape), dtype


class NpzImages(_Store):
    """The ``images`` array of an ``np.savez`` archive, read from disk image by image.

    Image ``i`` (HWC bytes) lies at ``offset + i * H * W * 3``; :meth:`read_into` reads each
    requested row with one ``pread`` and writes it channels-first."""

    def __init__(self, path: str, key: str = "images"):
        self.path = os.fspath(path)
        self.offset, shape, dtype = locate_npy_member(self.path, key)
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{self.path}: '{key}' must be a uint8 array of shape (N, H, W, 3); got {dtype} "
                             f"{shape}")
        if shape[0] == 0:
            raise ValueError(f"{self.path}: holds no images (an empty split)")
        n, h, w, c = shape
        self.shape = torch.Size((n, c, h, w))
        self._row = h * w * c
        self._file = _FileAt(self.path)

    def read_into(self, index: np.ndarray, out: np.ndarray) -> None:
        """``out[j] = images[index[j]]`` as (C, H, W); ``out`` uint8 (M, C, H, W).  Channels-last
        ``out`` (what :meth:`LazyImageSource.gather` passes) is read into directly."""
        index = _check_index(index, len(self), self.path)
        n, c, h, w = self.shape
        rows = out.transpose(0, 2, 3, 1)                        # (M, H, W, C): the file's layout
        direct = rows.flags.c_contiguous
        if not direct:
            rows = np.empty((index.size, h, w, c), dtype=np.uint8)
        flat, row = memoryview(rows.reshape(-1)), self._row
        for j, i in enumerate(index.tolist()):
            self._file.read_into(flat[j * row:(j + 1) * row], self.offset + i * row)
        if not direct:
            np.copyto(out, rows.transpose(0, 3, 1, 2))


# -- learn2learn's / Ren et al.'s pickle of PNG bytes ------------------------------------------------
#: byte strings shorter than this are read as values (a PNG file has at least 67 bytes)
_MIN_BLOB = 64
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Blob:
    """A byte string of the pickle left in the file: ``length`` bytes at ``offset``; ``text``:
    the bytes are the UTF-8 of a latin-1 string (how Python 3 pickles bytes at protocol <= 2);
    ``size`` (width, height) from the PNG header, None if it is not a PNG."""
    __slots__ = ("offset", "length", "text", "size")

    def __init__(self, offset: int, length: int, text: bool, size):
        self.offset, self.length, self.text, self.size = offset, length, text, size


class _ArrayStub:
    """What ``_reconstruct`` / ``_frombuffer`` build instead of an array: its dtype, shape and data."""
    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype=None, shape=None, data=None):
        self.dtype, self.shape, self.data = dtype, shape, data

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("unexpected numpy array state")
        self.shape, self.dtype, _, self.data = state[-4:]


class _NdarrayMarker:
    """``numpy.ndarray`` as the pickle names it (only passed to ``_reconstruct``)."""

    def __init__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to allocate numpy.ndarray(...) from a declared shape")


def _reconstruct(subtype, shape, dtype):
    return _ArrayStub()


def _frombuffer(buffer, dtype, shape, order="C"):
    return _ArrayStub(dtype, shape, buffer)


def _encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode``: Python 3 pickles ``bytes`` at protocol <= 2 as ``encode(latin-1 text, 'latin1')``."""
    if isinstance(obj, _Blob):
        if not obj.text or str(encoding).lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
            raise pickle.UnpicklingError(f"unexpected _codecs.encode(..., {encoding!r}) of a long string")
        return obj
    import _codecs
    return _codecs.encode(obj, encoding, errors)


def _blob_aware(kind):
    make = _byte_string(kind)

    def call(*args):
        if args and isinstance(args[0], _Blob):
            return args[0]
        return make(*args)
    return call


class _BlobScanner(pickle._Unpickler):
    """A restricted unpickler that leaves long byte strings in the file.

    Globals are resolved from :data:`episodes.sources.safe_pickle.ALLOWED_GLOBALS` only
    (anything else: :class:`UnsafePickleError`); numpy arrays become :class:`_ArrayStub` s and
    byte strings of ``_MIN_BLOB`` bytes or more become :class:`_Blob` s (offset and length;
    their first 24 bytes, the PNG signature and header, are read): nothing large is held in
    memory.  The pure-Python unpickler is used because it reads through ``self.read``, so
    the position of every byte string in the file is known (frames of protocol 4+ included).
    """

    def __init__(self, f, path: str, size: int, progress=None):
        super().__init__(f, encoding="latin1")
        self._f, self._path, self._size, self._progress = f, path, size, progress
        self._blobs = 0
        self.dispatch = dict(pickle._Unpickler.dispatch)
        for op, length_format, convert in (
                (pickle.BINSTRING, "<i", "str"), (pickle.SHORT_BINSTRING, "<B", "str"),
                (pickle.BINBYTES, "<I", "bytes"), (pickle.SHORT_BINBYTES, "<B", "bytes"),
                (pickle.BINBYTES8, "<Q", "bytes"), (pickle.BYTEARRAY8, "<Q", "bytearray"),
                (pickle.BINUNICODE, "<I", "text"), (pickle.SHORT_BINUNICODE, "<B", "text"),
                (pickle.BINUNICODE8, "<Q", "text")):
            self.dispatch[op[0]] = self._string_loader(length_format, convert)

    def _string_loader(self, length_format: str, convert: str):
        width = struct.calcsize(length_format)

        def load(self):
            n, = struct.unpack(length_format, self.read(width))
            if n < 0:
                raise pickle.UnpicklingError("negative byte count")
            if n >= _MIN_BLOB:
                self.append(self._blob(n, text=convert == "text"))
                return
            data = self.read(n)
            if len(data) < n:
                raise EOFError
            if convert == "str":
                self.append(self._decode_string(data))
            elif convert == "text":
                self.append(str(data, "utf-8", "surrogatepass"))
            elif convert == "bytearray":
                self.append(bytearray(data))
            else:
                self.append(data)
        return load

    def _frame_left(self) -> int:
        frame = self._unframer.current_frame
        if frame is None:
            return 0
        cur = frame.tell()
        end = frame.seek(0, io.SEEK_END)
        frame.seek(cur)
        return end - cur

    def _blob(self, n: int, text: bool) -> _Blob:
        left = self._frame_left()
        offset = self._f.tell() - left
        if offset + n > self._size:
            raise EOFError
        size = None
        skip = n
        if not text:
            head = self.read(24)
            skip -= 24
            if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
                size = struct.unpack(">II", head[16:24])
            left = self._frame_left()
        if left:
            if left < skip:
                raise pickle.UnpicklingError("pickle exhausted before end of frame")
            frame = self._unframer.current_frame
            frame.seek(skip, io.SEEK_CUR)
        else:
            self._unframer.current_frame = None
            self._f.seek(skip, io.SEEK_CUR)
        self._blobs += 1
        if self._progress is not None and self._blobs % 4096 == 0:
            self._progress.update(self._f.tell() - self._progress.n)
        return _Blob(offset, n, text, size)

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"{self._path}: refusing to load global '{module}.{name}' (dataset pickles "
                                    f"may only contain numpy arrays/dtypes and plain containers)")
        if name == "_reconstruct":
            return _reconstruct
        if name == "_frombuffer":
            return _frombuffer
        if name == "ndarray":
            return _NdarrayMarker
        if module == "_codecs":
            return _encode
        if name in ("bytes", "bytearray"):
            import builtins
            return _blob_aware(getattr(builtins, name))
        return _resolve(module, name)

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._path}: persistent ids are not allowed")


def _scan_png_pickle(path: str) -> List:
    """The top-level object of the pickle ``path`` with its long byte strings left in the file."""
    size = os.path.getsize(path)
    from tqdm import tqdm
    with open(path, "rb", buffering=1 << 16) as f, \
            tqdm(total=size, unit="B", unit_scale=True, desc=f"indexing {os.path.basename(path)}",
                 disable=True if size < 256 * 2 ** 20 else None, leave=False) as bar:
        try:
            return _BlobScanner(f, path, size, bar).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                struct.error, UnicodeDecodeError) as e:
            what = "truncated" if isinstance(e, EOFError) else f"{type(e).__name__}: {str(e).strip()[:120]}"
            raise ValueError(f"{path}: not a readable pickle of PNG images ({what}); expected a pickled list "
                             f"of PNG-encoded images (numpy uint8 arrays or bytes)") from None


def _png_items(obj, path: str) -> List[_Blob]:
    """The image byte strings of the scanned pickle: a list (or tuple, or object array) of
    uint8 arrays / byte strings."""
    if isinstance(obj, _ArrayStub) and np.dtype(obj.dtype) == np.dtype(object) and isinstance(obj.data, list):
        obj = obj.data
    if not isinstance(obj, (list, tuple)):
        kind = "numpy array" if isinstance(obj, _ArrayStub) else type(obj).__name__
        raise ValueError(f"{path}: expected a pickled list of PNG-encoded images (numpy uint8 arrays or bytes), "
                         f"got a {kind}")
    if not obj:
        raise ValueError(f"{path}: holds no images (an empty split)")
    blobs = []
    for i, item in enumerate(obj):
        data = item
        if isinstance(item, _ArrayStub):
            if not isinstance(item.dtype, np.dtype) or item.dtype != np.uint8:
                raise ValueError(f"{path}: image {i} is an array of {item.dtype}, expected the uint8 bytes of a PNG")
            data = item.data
        if not isinstance(data, _Blob):
            n = len(data) if isinstance(data, (bytes, bytearray, str)) else None
            raise ValueError(f"{path}: image {i} is " + (f"{n} bytes long, too short for a PNG" if n is not None
                                                        else f"a {type(data).__name__}, not PNG bytes"))
        if not data.text and data.size is None:
            raise ValueError(f"{path}: image {i} is not a PNG (no PNG signature and header); expected PNG-encoded "
                             f"images")
        blobs.append(data)
    return blobs


def _decode_png(data, size: Tuple[int, int], where: str) -> np.ndarray:
    """PNG bytes -> uint8 (3, H, W) in B, G, R plane order (``cv2.imdecode``'s), after checking
    the declared ``size`` (width, height) before decoding."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data), formats=("PNG",)) as im:
            if im.size != tuple(size):
                raise ValueError(f"{where}: a {im.size[0]}x{im.size[1]} image; the split's images are "
                                 f"{size[0]}x{size[1]}")
            rgb = np.asarray(im.convert("RGB"))
    except ValueError as e:
        if str(e).startswith(f"{where}: "):
            raise
        raise ValueError(f"{where}: not a readable PNG image ({type(e).__name__})") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{where}: not a readable PNG image ({type(e).__name__})") from None
    return rgb[:, :, ::-1].transpose(2, 0, 1)


#: the largest image (width x height) a PNG pickle may declare: tieredImageNet's are 84x84
MAX_PNG_PIXELS = 1024 * 1024


class PngPickleImages(_Store):
    """The PNG images of a pickle, read and decoded image by image.

    Holds three arrays (offset and length of each PNG's bytes in the file, whether they are
    stored as latin-1 text) and nothing of the images: :meth:`read_into` reads each requested
    PNG with one ``pread`` and decodes it (PIL)."""

    def __init__(self, path: str, offsets: np.ndarray, lengths: np.ndarray, text: np.ndarray,
                 size: Tuple[int, int]):
        self.path = os.fspath(path)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        self.text = np.ascontiguousarray(text, dtype=bool)
        self.size = (int(size[0]), int(size[1]))                # (width, height)
        self.shape = torch.Size((self.offsets.size, 3, self.size[1], self.size[0]))
        self._file = _FileAt(self.path)

    @classmethod
    def scan(cls, path) -> "PngPickleImages":
        """Index the pickle ``path`` (one pass; the PNG bytes are skipped, not read)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: file not found")
        blobs = _png_items(_scan_png_pickle(path), path)
        sizes = {b.size for b in blobs if b.size is not None}
        first = blobs[0]
        if len(sizes) > 1:
            i = next(i for i, b in enumerate(blobs) if b.size is not None and b.size != blobs[0].size)
            raise ValueError(f"{path}: image {i} is {blobs[i].size[0]}x{blobs[i].size[1]}, image 0 "
                             f"{blobs[0].size[0]}x{blobs[0].size[1]}; all images of a split must have one size")
        offsets = np.fromiter((b.offset for b in blobs), dtype=np.int64, count=len(blobs))
        lengths = np.fromiter((b.length for b in blobs), dtype=np.int64, count=len(blobs))
        text = np.fromiter((b.text for b in blobs), dtype=bool, count=len(blobs))
        del blobs
        if sizes:
            size = sizes.pop()
        else:                                      # every image stored as text: decode the first for its size
            from PIL import Image
            raw = _FileAt(path).read(first.offset, first.length).decode("utf-8", "surrogatepass").encode("latin1")
            try:
                with Image.open(io.BytesIO(raw), formats=("PNG",)) as im:
                    size = im.size
            except (OSError, SyntaxError, ValueError):
                raise ValueError(f"{path}: image 0 is not a readable PNG image") from None
        if size[0] * size[1] > MAX_PNG_PIXELS:   # a batch allocates this per image before decoding
            raise ValueError(f"{path}: its PNG images declare {size[0]}x{size[1]} pixels; tieredImageNet images "
                             f"are 84x84 (at most {MAX_PNG_PIXELS} pixels are accepted)")
        return cls(path, offsets, lengths, text, size)

    def read_into(self, index: np.ndarray, out: np.ndarray) -> None:
        """``out[j]`` = image ``index[j]`` decoded, (3, H, W) in B, G, R plane order."""
        index = _check_index(index, len(self), self.path)
        for j, i in enumerate(index.tolist()):
            data = self._file.read(int(self.offsets[i]), int(self.lengths[i]))
            if self.text[i]:
                data = data.decode("utf-8", "surrogatepass").encode("latin1")
            out[j] = _decode_png(data, self.size, f"{self.path}: image {i}")


# -- labels and the split -------------------------------------------------------------------------
def read_labels(path: str, n: int, split: str, images_path: str) -> Tuple[np.ndarray, Optional[Dict[int, str]]]:
    """Class ids (int64, one per image) and class names of ``{split}_labels.pkl``."""
    d = str_keys(load_pickle(path), path)
    key = "labels" if "labels" in d else "label_specific"
    require_keys(d, (key,), path, "a dict with 'labels' (MetaOptNet) or 'label_specific' (Ren et al., "
                                  "learn2learn): one integer class per image")
    values = d[key]
    count = len(values) if hasattr(values, "__len__") else None
    if count is not None and count != n:
        raise ValueError(f"{path}: {count} labels in '{key}' for the {n} images of {images_path}; expected one "
                         f"label per image")
    offset = 0 if key == "labels" else SPLIT_CLASS_OFFSET.get(split, 0)
    labels = int_labels(values, n, path, key) + offset
    names = None
    strs = d.get("label_specific_str")
    if key == "label_specific" and isinstance(strs, (list, tuple)):
        names = {offset + i: (s.decode("latin1") if isinstance(s, bytes) else str(s)) for i, s in enumerate(strs)}
    return labels, names


def find_tiered(dirs, split: str):
    """``(kind, images path, labels path)`` of ``split``: the npz first, then the PNG pickle;
    the labels file is looked for beside the images (None if missing).  ``(None, None, None)``
    if neither images file is there."""
    for kind, pattern in (("npz", NPZ_FILE), ("png", PNG_PICKLE_FILE)):
        for d in dirs:
            images = os.path.join(d, pattern.format(split=split))
            if os.path.isfile(images):
                labels = os.path.join(d, LABELS_FILE.format(split=split))
                return kind, images, (labels if os.path.isfile(labels) else None)
    return None, None, None


def expected_files(split: str) -> str:
    return (f"{NPZ_FILE.format(split=split)} (MetaOptNet) or {PNG_PICKLE_FILE.format(split=split)} (learn2learn), "
            f"each with {LABELS_FILE.format(split=split)}")


def load_tiered(kind: str, images: str, labels: Optional[str], split: str) -> LazyImageSource:
    """The split whose images are ``images`` (``kind`` "npz" or "png") and labels ``labels``."""
    if labels is None:
        raise FileNotFoundError(f"{images}: no {LABELS_FILE.format(split=split)} beside it (the class of each "
                                f"image); expected {expected_files(split)}")
    store = NpzImages(images) if kind == "npz" else PngPickleImages.scan(images)
    ids, names = read_labels(labels, len(store), split, images)
    return LazyImageSource(store, ids, split=split, name="tiered-imagenet", mean=TIERED_MEAN, std=TIERED_STD,
                           class_names=names, path=images)
