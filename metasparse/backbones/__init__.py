"""Feature extractors: ``build_backbone(name, **options)``.

* ``resnet12``: MetaOptNet's ResNet-12 (images; 16000-d at 84x84, 2560-d at 32x32);
* ``conv4``:    the 4-layer conv net (images);
* ``mlp``:      an MLP for vector data (synthetic source), ``in_dim`` / ``out_dim`` required.

``build_backbone`` is what checkpoints use to rebuild a model: a checkpoint stores
``{"name": ..., "options": {...}}`` and nothing else about the architecture.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .conv4 import Conv4
from .dropblock import DropBlock
from .mlp import MLP
from .resnet12 import ResNet12

__all__ = ["ResNet12", "Conv4", "MLP", "DropBlock", "BACKBONES", "build_backbone"]

BACKBONES = {"resnet12": ResNet12, "conv4": Conv4, "mlp": MLP}


def build_backbone(name: str, **options: Any) -> nn.Module:
    """Instantiate backbone ``name`` with keyword ``options`` (see each class)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    try:
        return BACKBONES[key](**options)
    except TypeError as e:
        raise ValueError(f"backbone {name!r}: bad options {options}: {e}") from None
