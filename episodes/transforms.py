"""Batched image transforms for episodes: MetaOptNet's training augmentation and normalisation.

All transforms take a whole batch of images, uint8 ``(M, C, H, W)`` (any device), and an
optional CPU ``torch.Generator``; they return float32 ``(M, C, H, W)`` normalised images on
the input's device:

    x_out = (x / 255 - mean) / std                                    (per channel)

Training (MetaOptNet, Lee et al. 2019): ``RandomCrop(size, padding=p)`` (p = 8 for 84x84,
4 for 32x32, zero fill), ``ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)``,
``RandomHorizontalFlip()``, then normalisation.

Why not ``torchvision.transforms.v2`` classes on the batch?  A v2 transform called on a
batched tensor draws *one* set of random parameters for the whole batch (every image gets
the same crop, flip and jitter), which is not the augmentation MetaOptNet trains with; a
per-image Python loop is correct but slow.  :class:`MetaOptNetTrainTransform` therefore
draws per-image parameters from a ``torch.Generator`` (reproducible) and applies them
vectorised:

* crop + flip: one ``torch.gather`` on the zero-padded uint8 batch, with per-image row
  offset ``i``, column offset ``j`` and column order reversed for flipped images
  (``out[m, c, y, x] = pad[m, c, i_m + y, j_m + (W-1-x if flip_m else x)]``).  Flip commutes
  with the colour jitter (which is per pixel plus an image-wide mean), so applying it
  together with the crop is exact;
* colour jitter with per-image factors ``f ~ U[0.6, 1.4]`` and a per-image random order of
  the three operations (as ``ColorJitter`` does), each the torchvision blend
  ``clamp(f * x + (1 - f) * y, 0, 1)`` with y = 0 (brightness), the mean grey level of the
  image (contrast) or the grey image ``0.2989 R + 0.587 G + 0.114 B`` (saturation).  All
  three are ``clamp(f x + (1 - f) y, 0, 1)``, so step t of every image's own order is one
  vectorised blend with per-image ``(f, y)``; it runs in place on cache-sized chunks of the
  output (on CPU, fresh large allocations and scatters cost more than the arithmetic).

``tests/episodes/test_transforms.py`` checks each image against torchvision's v2 functional
kernels applied one image at a time with the same parameters.  Evaluation is
normalisation only (``v2.ToDtype`` + ``v2.Normalize``, parameter-free so batching is exact).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as TF

from .sources.cifar import CIFAR_MEAN, CIFAR_STD
from .sources.cub import CUB_MEAN, CUB_STD
from .sources.miniimagenet import MINI_IMAGENET_MEAN, MINI_IMAGENET_STD
from .sources.tiered import TIERED_MEAN, TIERED_STD
from .sources.omniglot import OMNIGLOT_MEAN, OMNIGLOT_STD

__all__ = ["NORMALISATION", "IMAGE_SIZE", "JitterParams", "MetaOptNetTrainTransform", "Normalise",
           "IdentityTransform", "train_transform", "eval_transform", "torchvision_train_transform",
           "crop_padding"]

NORMALISATION = {
    "mini-imagenet": (MINI_IMAGENET_MEAN, MINI_IMAGENET_STD),
    "cifar-fs": (CIFAR_MEAN, CIFAR_STD),
    "fc100": (CIFAR_MEAN, CIFAR_STD),
    "tiered-imagenet": (TIERED_MEAN, TIERED_STD),
    "omniglot": (OMNIGLOT_MEAN, OMNIGLOT_STD),
    "cub": (CUB_MEAN, CUB_STD),
}
IMAGE_SIZE = {"mini-imagenet": 84, "cifar-fs": 32, "fc100": 32, "omniglot": 28, "cub": 84, "tiered-imagenet": 84}
#: datasets trained without augmentation (normalisation only): Omniglot, whose protocol
#: (Vinyals et al., Snell et al.) adds rotations as classes instead; a flip or crop would
#: change a character
NO_AUGMENTATION = ("omniglot",)
_GREY = (0.2989, 0.587, 0.114)


def crop_padding(size: int) -> int:
    """MetaOptNet's RandomCrop padding: 8 for 84x84 images, 4 for 32x32 (size // 10 otherwise)."""
    return {84: 8, 32: 4}.get(int(size), max(1, int(size) // 10))


@dataclass
class JitterParams:
    """Per-image random parameters of one call (all CPU tensors of length M)."""
    top: torch.Tensor         # (M,) crop row offset in the padded image, 0..2p
    left: torch.Tensor        # (M,) crop column offset, 0..2p
    flip: torch.Tensor        # (M,) bool
    factors: torch.Tensor     # (3, M) brightness, contrast, saturation factors
    order: torch.Tensor       # (M, 3) permutation of (0 brightness, 1 contrast, 2 saturation)

    def subset(self, lo: int, hi: int) -> "JitterParams":
        return JitterParams(self.top[lo:hi], self.left[lo:hi], self.flip[lo:hi], self.factors[:, lo:hi],
                            self.order[lo:hi])


def empty_output(shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """A fresh output tensor; inside a DataLoader worker (CPU) it is allocated directly in
    shared memory, so sending the batch to the main process needs no extra copy (the
    pattern ``default_collate`` uses)."""
    device = torch.device(device)
    if device.type == "cpu" and torch.utils.data.get_worker_info() is not None:
        n = 1
        for d in shape:
            n *= int(d)
        storage = torch.UntypedStorage._new_shared(n * torch.empty((), dtype=dtype).element_size())
        return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if device.type == "cpu" and HUGE_PAGES:
        advise_huge_pages(out)
    return out


#: False: never ask for transparent huge pages in :func:`empty_output` (e.g. where the
#: kernel's THP ``defrag`` setting makes page faults stall on a fragmented memory).
HUGE_PAGES = True
_HUGE = 2 << 20
_madvise = None


def advise_huge_pages(t: torch.Tensor, min_bytes: int = 4 * _HUGE) -> bool:
    """Ask Linux to back a fresh, untouched CPU tensor of at least ``min_bytes`` with
    transparent huge pages (``madvise(MADV_HUGEPAGE)`` on its 2 MB-aligned part).

    A 71 MB float32 batch otherwise costs ~17,000 page faults on first touch, about a
    third of the CPU augmentation's time; with 2 MB pages ~35.  Only the page size
    changes (no data is touched).  Returns False where it does not apply (small tensor,
    not Linux, THP set to ``never``: then nothing happens)."""
    global _madvise
    nbytes = t.untyped_storage().nbytes()
    if nbytes < min_bytes or t.device.type != "cpu":
        return False
    if _madvise is None:
        try:
            import ctypes
            import sys
            if not sys.platform.startswith("linux"):
                raise OSError
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.madvise
            fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            fn.restype = ctypes.c_int
            _madvise = fn
        except (OSError, AttributeError):
            _madvise = False
    if not _madvise:
        return False
    ptr = t.untyped_storage().data_ptr()
    lo, hi = (ptr + _HUGE - 1) // _HUGE * _HUGE, (ptr + nbytes) // _HUGE * _HUGE
    return hi > lo and _madvise(lo, hi - lo, 14) == 0          # 14 = MADV_HUGEPAGE


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device`` without a host sync: pinned + non-blocking on CUDA
    (a pageable copy would wait for the device's queued work)."""
    if t.device == device:
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _gather(images: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
    return images if index is None else images.index_select(0, index.to(images.device))


class Normalise:
    """Evaluation transform: ``(x / 255 - mean) / std`` on a uint8 batch (the arithmetic of v2's ToDtype + Normalize)."""

    supports_index = True

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
                 index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``images[index]`` (all images if ``index`` is None) as normalised float32."""
        x = _gather(images, index)
        out = empty_output(x.shape, torch.float32, x.device)
        out.copy_(x).mul_(1.0 / 255.0)                  # v2.ToDtype(float32, scale=True)
        # v2.functional.normalize(inplace=True) on a tensor: sub_(mean).div_(std), per channel
        # (torchvision itself is imported only by the reference transform: it pulls in
        # torch._dynamo, a second of start-up)
        mean = torch.tensor(self.mean, dtype=out.dtype, device=out.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=out.dtype, device=out.device).view(-1, 1, 1)
        return out.sub_(mean).div_(std)

    def sample_params(self, m: int, generator: Optional[torch.Generator] = None) -> None:
        """Parameter-free (draws nothing): deferred application needs no parameters."""
        return None

    def augment(self, images: torch.Tensor, params=None) -> torch.Tensor:
        """Deferred application (on the images' device)."""
        return self(images)

    def __repr__(self) -> str:
        return f"Normalise(mean={self.mean}, std={self.std})"


class IdentityTransform:
    """For vector sources: returns the data as float32."""

    supports_index = True

    def __call__(self, data: torch.Tensor, generator: Optional[torch.Generator] = None,
                 index: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = _gather(data, index)
        return x.float() if x.dtype != torch.float32 or index is not None else x.clone()

    def sample_params(self, m: int, generator: Optional[torch.Generator] = None) -> None:
        return None

    def augment(self, data: torch.Tensor, params=None) -> torch.Tensor:
        return self(data)

    def __repr__(self) -> str:
        return "IdentityTransform()"


class MetaOptNetTrainTransform:
    """Per-image random crop (zero padding), colour jitter, horizontal flip, then normalise.

    Parameters follow MetaOptNet: ``padding`` 8 (84x84) / 4 (32x32), jitter strengths 0.4,
    flip probability 0.5.  Calls with equal generator states give equal outputs.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: int, padding: Optional[int] = None,
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, flip_p: float = 0.5):
        self.mean, self.std = tuple(mean), tuple(std)
        self.size = int(size)
        self.padding = crop_padding(size) if padding is None else int(padding)
        self.strength = (float(brightness), float(contrast), float(saturation))
        self.flip_p = float(flip_p)

    def __repr__(self) -> str:
        return (f"MetaOptNetTrainTransform(size={self.size}, padding={self.padding}, "
                f"jitter={self.strength}, flip_p={self.flip_p})")

    # -- parameters ---------------------------------------------------------------------
    def sample_params(self, m: int, generator: Optional[torch.Generator] = None) -> JitterParams:
        """Draw the per-image parameters of ``m`` images (fixed draw order: reproducible)."""
        p = self.padding
        top = torch.randint(0, 2 * p + 1, (m,), generator=generator)
        left = torch.randint(0, 2 * p + 1, (m,), generator=generator)
        flip = torch.rand(m, generator=generator) < self.flip_p
        lo = torch.tensor([max(0.0, 1 - s) for s in self.strength]).unsqueeze(1)
        hi = torch.tensor([1 + s for s in self.strength]).unsqueeze(1)
        factors = lo + (hi - lo) * torch.rand(3, m, generator=generator)
        order = torch.rand(m, 3, generator=generator).argsort(dim=1)
        return JitterParams(top, left, flip, factors, order)

    # -- application ----------------------------------------------------------------------
    @staticmethod
    def coefficients(params: JitterParams) -> torch.Tensor:
        """The per-image numbers the application needs, packed in one float32 CPU tensor
        (12, M): rows top, left, flip, then the factor ``f``, grey weight ``a`` and grey-mean
        weight ``b`` of jitter steps 0, 1, 2 (rows 3-5, 6-8, 9-11).  Step t applies op
        ``order[:, t]``: ``clamp(f x + (1 - f) y, 0, 1)`` with ``y = a' grey(x) + b' mean(grey(x))``,
        ``(a', b') = (0, 0)`` brightness, ``(0, 1)`` contrast, ``(1, 0)`` saturation, and
        ``a = a' (1 - f)``, ``b = b' (1 - f)``.  One tensor: one host-to-device copy."""
        m = params.top.numel()
        ar = torch.arange(m)
        f_step = torch.stack([params.factors[params.order[:, t], ar] for t in range(3)]).float()   # (3, M)
        a_step = (params.order.T == 2).float() * (1 - f_step)
        b_step = (params.order.T == 1).float() * (1 - f_step)
        head = torch.stack([params.top.float(), params.left.float(), params.flip.float()])
        return torch.cat([head, f_step, a_step, b_step])

    def _constants(self, device: torch.device):
        """(inv_std, shift) as (1, C, 1, 1) float32 on ``device`` (cached: copied once per device)."""
        key = str(device)
        cache = self.__dict__.setdefault("_const_cache", {})
        if key not in cache:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            inv_std = (1.0 / torch.tensor(self.std, dtype=torch.float32)).view(1, -1, 1, 1)
            cache[key] = (inv_std.to(device), (-mean * inv_std).to(device))
        return cache[key]

    def __getstate__(self):            # workers (spawn) get no device tensors
        state = dict(self.__dict__)
        state.pop("_const_cache", None)
        return state

    def crop_flip(self, images: torch.Tensor, params: JitterParams) -> torch.Tensor:
        """uint8 (M,C,H,W) -> uint8 (M,C,size,size): zero-pad by p, crop at (top, left), flip."""
        dev = images.device
        return self._gather_crop(images, params.top.to(dev), params.left.to(dev), params.flip.to(dev))

    def _gather_crop(self, images: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                     flip: torch.Tensor) -> torch.Tensor:
        """:meth:`crop_flip` with the parameters as tensors on the images' device (one gather)."""
        m, c, h, w = images.shape
        p, s, dev = self.padding, self.size, images.device
        padded = TF.pad(images, (p, p, p, p), value=0) if p > 0 else images
        hp, wp = h + 2 * p, w + 2 * p
        ar = torch.arange(s, device=dev)
        rows = top[:, None] + ar                                                     # (M, s)
        cols = torch.where(flip[:, None], s - 1 - ar, ar) + left[:, None]
        lin = (rows[:, :, None] * wp + cols[:, None, :]).reshape(m, 1, s * s)      # (M, 1, s*s)
        out = torch.gather(padded.reshape(m, c, hp * wp), 2, lin.expand(m, c, s * s))
        return out.reshape(m, c, s, s)

    supports_index = True
    chunk_elements = 1 << 20          # CPU: images processed together (~4 MB of float32)
    vectorised = False                # True: the accelerator code path (whole batch, gather crop) on CPU too

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
                 params: Optional[JitterParams] = None, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Augment ``images[index]`` (all images if ``index`` is None); returns float32 (M, C, s, s).

        Passing ``index`` avoids materialising the gathered uint8 batch: crops are read
        straight from the source tensor.  The parameters are ``params``, else drawn from
        ``generator`` (:meth:`sample_params`).  Off the CPU (or with ``vectorised``) this is
        :meth:`augment` of the gathered batch."""
        self._check(images)
        m = images.shape[0] if index is None else index.numel()
        if params is None:
            params = self.sample_params(m, generator)
        if images.device.type != "cpu" or self.vectorised:
            if index is not None:
                images = images.index_select(0, index.reshape(-1).to(images.device))
            return self.augment(images, params)
        index = torch.arange(m) if index is None else index.reshape(-1)
        c, s = images.shape[1], self.size
        coef = self.coefficients(params).view(12, m, 1, 1, 1)
        inv_std, shift = self._constants(images.device)
        # Work in place in the output, a chunk of rows at a time (cache-sized on CPU): fresh
        # large CPU allocations (page faults) and scatters cost more than the arithmetic.
        chunk = max(1, min(m, self.chunk_elements // (c * s * s)))
        out = empty_output((m, c, s, s), torch.float32, images.device)
        grey = torch.empty(min(chunk, m), 1, s, s, dtype=torch.float32)
        for lo in range(0, m, chunk):
            hi = min(lo + chunk, m)
            x = out[lo:hi]
            self._crop_flip_into(x, images, index[lo:hi], params.subset(lo, hi))
            self._jitter_normalise(x, grey[: hi - lo], coef[:, lo:hi], inv_std, shift)
        return out

    def augment(self, images: torch.Tensor, params: JitterParams) -> torch.Tensor:
        """The whole-batch (accelerator) path: uint8 (M, C, H, W) images already gathered, on
        any device, and their parameters (CPU tensors, e.g. drawn in a DataLoader worker) ->
        float32 (M, C, s, s) on the images' device.  The parameters cross to the device as
        one tensor (pinned, non-blocking on CUDA) and nothing is read back: no host sync."""
        self._check(images)
        m, c = images.shape[:2]
        s, dev = self.size, images.device
        coef = _to_device(self.coefficients(params), dev)
        crops = self._gather_crop(images, coef[0].long(), coef[1].long(), coef[2] > 0.5)
        out = empty_output((m, c, s, s), torch.float32, dev)
        out.copy_(crops)
        grey = torch.empty(m, 1, s, s, dtype=torch.float32, device=dev)
        inv_std, shift = self._constants(dev)
        self._jitter_normalise(out, grey, coef.view(12, m, 1, 1, 1), inv_std, shift)
        return out

    @staticmethod
    def _jitter_normalise(x: torch.Tensor, g: torch.Tensor, coef: torch.Tensor, inv_std: torch.Tensor,
                          shift: torch.Tensor) -> None:
        """In place on float32 crops ``x`` (values 0..255): scale to [0, 1], the three jitter
        steps with the packed per-image ``coef`` (12, M, 1, 1, 1) (see :meth:`coefficients`),
        normalise.  ``g``: a (M, 1, s, s) scratch buffer."""
        x.mul_(1.0 / 255.0)
        for t in range(3):
            f, a, b = coef[3 + t], coef[6 + t], coef[9 + t]
            r_, g_, b_ = x.unbind(dim=-3)
            torch.mul(r_, _GREY[0], out=g[:, 0])
            g[:, 0].add_(g_, alpha=_GREY[1]).add_(b_, alpha=_GREY[2])
            y_mean = g.mean(dim=(-3, -2, -1), keepdim=True)
            g.mul_(a).add_(y_mean * b)
            torch.addcmul(g, x, f, out=x).clamp_(0, 1)                   # x <- f x + (1-f) y
        torch.addcmul(shift, x, inv_std, out=x)                           # x <- (x - mean) / std

    @staticmethod
    def _check(images: torch.Tensor) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"MetaOptNetTrainTransform expects uint8 (M, C, H, W) images; got "
                             f"{images.dtype} {tuple(images.shape)}")

    def _crop_flip_into(self, dst: torch.Tensor, images: torch.Tensor, idx: torch.Tensor,
                        params: JitterParams) -> None:
        """dst[j] = crop_flip(images[idx[j]]) with the j-th parameters (converted to dst's dtype)."""
        p, s = self.padding, self.size
        h, w = images.shape[-2:]
        tops, lefts, flips = params.top.tolist(), params.left.tolist(), params.flip.tolist()
        if p > 0:
            dst.zero_()                          # padding; one memset per chunk beats one per image
        # numpy views: slicing and a reversed (negative-stride) view cost ~10x less per image
        # than the equivalent torch calls, and the cast to float happens in the copy
        d_np, i_np = dst.numpy(), images.numpy()
        for j, mi in enumerate(idx.tolist()):
            # padded coordinates [t, t+s) x [l, l+s) <-> image rows [t-p, t-p+s) clipped to [0, h)
            y0, x0 = tops[j] - p, lefts[j] - p
            r0, r1 = max(0, y0), min(h, y0 + s)
            c0, c1 = max(0, x0), min(w, x0 + s)
            src = i_np[mi, :, r0:r1, c0:c1]
            if flips[j]:
                # flipped output column x shows padded column l + s-1-x
                d_np[j, :, r0 - y0: r1 - y0, s - (c1 - x0): s - (c0 - x0)] = src[:, :, ::-1]
            else:
                d_np[j, :, r0 - y0: r1 - y0, c0 - x0: c1 - x0] = src


def _constants(dataset) -> Tuple[str, Tuple[float, ...], Tuple[float, ...], Optional[int]]:
    """(name, mean, std, image size) from a dataset name or a FewShotSource."""
    if isinstance(dataset, str):
        from .sources import normalise_dataset
        name = normalise_dataset(dataset)
        if name not in NORMALISATION:
            return name, (), (), None
        mean, std = NORMALISATION[name]
        return name, mean, std, IMAGE_SIZE[name]
    name = getattr(dataset, "name", "?")
    if not getattr(dataset, "is_image", False):
        return name, (), (), None
    mean = dataset.mean or NORMALISATION.get(name, (None, None))[0]
    std = dataset.std or NORMALISATION.get(name, (None, None))[1]
    if mean is None or std is None:
        raise ValueError(f"{name}: image source without normalisation constants (mean/std)")
    return name, tuple(mean), tuple(std), int(dataset.data.shape[-1])


def train_transform(dataset) -> Union[MetaOptNetTrainTransform, IdentityTransform]:
    """MetaOptNet training augmentation for a dataset name or source (identity for vectors;
    normalisation only for the datasets of :data:`NO_AUGMENTATION`)."""
    name, mean, std, size = _constants(dataset)
    if size is None:
        return IdentityTransform()
    if name in NO_AUGMENTATION:
        return Normalise(mean, std)
    return MetaOptNetTrainTransform(mean, std, size)


def eval_transform(dataset) -> Union[Normalise, IdentityTransform]:
    """Normalisation only (identity for vector sources)."""
    name, mean, std, size = _constants(dataset)
    if size is None:
        return IdentityTransform()
    return Normalise(mean, std)


def torchvision_train_transform(dataset):
    """The same augmentation as a per-image ``torchvision.transforms.v2`` pipeline
    (one image ``(C, H, W)`` uint8 per call).  Used as the reference / baseline only."""
    name, mean, std, size = _constants(dataset)
    if size is None:
        raise ValueError(f"{name}: torchvision_train_transform needs an image dataset")
    from torchvision.transforms import v2
    return v2.Compose([
        v2.RandomCrop(size, padding=crop_padding(size)),
        v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])
