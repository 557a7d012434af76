"""Batched MetaOptNet augmentation vs torchvision's v2 kernels applied image by image."""
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from episodes.sources.cifar import CIFAR_MEAN, CIFAR_STD
from episodes.sources.miniimagenet import MINI_IMAGENET_MEAN, MINI_IMAGENET_STD
from episodes.transforms import (IdentityTransform, MetaOptNetTrainTransform, Normalise, crop_padding,
                                 eval_transform, torchvision_train_transform, train_transform)

OPS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)


def _reference(img, p, m, pad, mean, std):
    """One image through torchvision v2 functional kernels with the same parameters."""
    s = img.shape[-1]
    x = F.crop(F.pad(img, [pad, pad, pad, pad], fill=0), int(p.top[m]), int(p.left[m]), s, s)
    if p.flip[m]:
        x = F.horizontal_flip(x)
    x = F.to_dtype(x, torch.float32, scale=True)
    for op in p.order[m].tolist():
        x = OPS[op](x, float(p.factors[op, m]))
    return F.normalize(x, list(mean), list(std))


@pytest.mark.parametrize("size,mean,std", [(84, MINI_IMAGENET_MEAN, MINI_IMAGENET_STD), (32, CIFAR_MEAN, CIFAR_STD)])
def test_matches_torchvision_per_image(size, mean, std):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 3, size, size), dtype=torch.uint8, generator=g)
    images[0] = 255                                      # saturating pixels exercise the clamps
    t = MetaOptNetTrainTransform(mean, std, size)
    assert t.padding == {84: 8, 32: 4}[size] == crop_padding(size)
    params = t.sample_params(len(images), torch.Generator().manual_seed(1))
    out = t(images, params=params)
    assert out.dtype == torch.float32 and out.shape == images.shape and out.is_contiguous()
    crops = t.crop_flip(images, params)                  # the vectorised gather (accelerator path)
    for m in range(len(images)):
        ref = _reference(images[m], params, m, t.padding, mean, std)
        torch.testing.assert_close(out[m], ref, atol=2e-5, rtol=0)
        ref_crop = F.crop(F.pad(images[m], [t.padding] * 4), int(params.top[m]), int(params.left[m]), size, size)
        assert torch.equal(crops[m], F.horizontal_flip(ref_crop) if params.flip[m] else ref_crop)
    # all kinds of parameters occurred
    assert params.flip.any() and (~params.flip).any() and len({tuple(o) for o in params.order.tolist()}) == 6
    assert params.top.min() == 0 or params.top.max() == 2 * t.padding


def test_per_image_randomness_and_reproducibility():
    t = train_transform("mini-imagenet")
    img = torch.randint(0, 256, (1, 3, 84, 84), dtype=torch.uint8).expand(16, -1, -1, -1).contiguous()
    a = t(img, generator=torch.Generator().manual_seed(5))
    b = t(img, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # the same image gets 16 different augmentations inside one batch
    assert all(not torch.equal(a[i], a[j]) for i in range(16) for j in range(i))
    c = t(img, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)


def test_parameter_ranges():
    t = MetaOptNetTrainTransform(CIFAR_MEAN, CIFAR_STD, 32)
    p = t.sample_params(4000, torch.Generator().manual_seed(0))
    assert p.top.min() == 0 and p.top.max() == 8 and p.left.min() == 0 and p.left.max() == 8
    assert 0.45 < p.flip.float().mean() < 0.55
    assert p.factors.min() >= 0.6 and p.factors.max() <= 1.4
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(3).expand(4000, 3))


def test_eval_is_normalisation_only():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    t = eval_transform("fc100")
    assert isinstance(t, Normalise)
    ref = (x.float() / 255 - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(t(x), ref)


def test_factories_and_errors(make_images, make_vectors):
    src = make_images(size=16, name="cifar-fs")
    t = train_transform(src)
    assert isinstance(t, MetaOptNetTrainTransform) and t.size == 16 and t.mean == CIFAR_MEAN
    assert isinstance(train_transform(make_vectors()), IdentityTransform)
    assert isinstance(eval_transform(make_vectors()), IdentityTransform)
    with pytest.raises(ValueError, match="expects uint8"):
        t(torch.zeros(2, 3, 16, 16))
    ref = torchvision_train_transform("cifar-fs")(torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert ref.shape == (3, 32, 32) and ref.dtype == torch.float32


def test_accelerator_code_path_matches_cpu_path():
    """The whole-batch gather path (used on GPUs) gives the same images as the CPU loop path."""
    t = train_transform("cifar-fs")
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    index = torch.randint(0, 40, (70,))
    a = t(images, generator=torch.Generator().manual_seed(3), index=index)
    t.vectorised = True
    b = t(images, generator=torch.Generator().manual_seed(3), index=index)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert a.shape == (70, 3, 32, 32)


def test_huge_page_advice_is_harmless():
    """empty_output asks for transparent huge pages on large fresh CPU outputs (fewer page
    faults); the data and the results are unaffected, small tensors are left alone."""
    import episodes.transforms as T
    assert not T.advise_huge_pages(torch.empty(10))
    big = T.empty_output((4, 3, 600, 600))
    big.fill_(1.5)
    assert big.shape == (4, 3, 600, 600) and bool((big == 1.5).all())
    t = train_transform("mini-imagenet")
    images = torch.randint(0, 256, (200, 3, 84, 84), dtype=torch.uint8)
    a = t(images, generator=torch.Generator().manual_seed(0))
    T.HUGE_PAGES = False
    try:
        b = t(images, generator=torch.Generator().manual_seed(0))
    finally:
        T.HUGE_PAGES = True
    assert torch.equal(a, b)
