"""Decoding one image file of a dataset, with the checks every reader makes: the declared
size is checked from the header before anything is decoded (a corrupt or hostile file
cannot make the reader allocate gigabytes), and an unreadable file is one ``ValueError``
naming it."""
from __future__ import annotations

import io
from typing import Tuple

__all__ = ["decode_resized"]


def decode_resized(data: bytes, where: str, *, kind: str, mode: str, size: Tuple[int, int], resample: str,
                   max_pixels: int, expected: str):
    """The image in ``data`` (a ``kind`` file, e.g. "PNG") converted to PIL ``mode`` and
    resized to ``size`` (width, height) with PIL's ``resample`` filter ("BILINEAR",
    "LANCZOS"...): a ``PIL.Image``.  Images declaring more than ``max_pixels`` pixels are
    refused before decoding; ``expected`` says what the dataset holds (for that message)."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:       # reads the header only: the size is checked first
            if im.size[0] * im.size[1] > max_pixels:
                raise ValueError(f"{where}: declares a {im.size[0]}x{im.size[1]} image; {expected} (refused "
                                 f"before decoding it)")
            return im.convert(mode).resize(size, getattr(Image, resample))
    except ValueError as e:
        if str(e).startswith(f"{where}: "):
            raise
        raise ValueError(f"{where}: not a readable {kind} image ({type(e).__name__}); replace or remove it") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{where}: declares a huge image; {expected} (refused before decoding it)") from None
    except (OSError, SyntaxError, EOFError) as e:   # UnidentifiedImageError, truncated data
        raise ValueError(f"{where}: not a readable {kind} image ({type(e).__name__}); replace or remove it") from None
