"""The backbone registry: each ``keras.applications`` backbone covidxr builds on, and the fixed
names of a built model's parts. Must not build models (that is :mod:`.build`): it only names them.

Adding a backbone is one entry in :data:`BACKBONES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras

__all__ = ["BACKBONES", "LAYER_NAMES", "Backbone", "get_backbone"]


@dataclass(frozen=True)
class Backbone:
    """One registry entry.

    Attributes:
        name: Registry key, e.g. ``"resnet50"``.
        constructor: A ``keras.applications`` constructor taking ``include_top``, ``weights``,
            ``input_shape``, ``pooling``.
        preprocess_input: The matching ``keras.applications.<module>.preprocess_input``; takes
            float RGB values in 0..255, shape (b, S, S, 3).
        last_conv_layer: Name of the backbone's last convolutional layer (Grad-CAM target).
        min_size: Smallest input side the backbone accepts, in pixels.
        fine_tune_from: Default first layer unfrozen in phase 2 (the last block).
        feature_layers: Candidate feature layers for truncated transfer (``feature_layer``
            of :func:`covidxr.models.build_model`), shallow to deep: the output of a late
            block; any layer of the backbone is accepted, these are the ones suggested.
    """

    name: str
    constructor: Callable
    preprocess_input: Callable
    last_conv_layer: str
    min_size: int = 32
    fine_tune_from: str | None = None
    feature_layers: tuple[str, ...] = ()


#: Registry of backbones: name -> :class:`Backbone`.
BACKBONES = {
    "resnet50": Backbone("resnet50", keras.applications.ResNet50,
                         keras.applications.resnet50.preprocess_input,
                         "conv5_block3_out", 32, "conv5_block1_1_conv",
                         ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")),
    "vgg16": Backbone("vgg16", keras.applications.VGG16,
                      keras.applications.vgg16.preprocess_input,
                      "block5_conv3", 32, "block5_conv1",
                      ("block3_conv3", "block4_conv3", "block5_conv3")),
    "vgg19": Backbone("vgg19", keras.applications.VGG19,
                      keras.applications.vgg19.preprocess_input,
                      "block5_conv4", 32, "block5_conv1",
                      ("block3_conv4", "block4_conv4", "block5_conv4")),
}

#: Fixed names of the parts of a built model.
LAYER_NAMES = {
    "input": "image",
    "to_rgb": "grey_to_rgb",
    "augmentation": "augmentation",
    "preprocess": "preprocess",
    "backbone": "backbone",
    "pooling": "pooling",
    "feature_norm": "feature_norm",
    "dropout": "dropout",
    "head": "head",
}


def get_backbone(name) -> Backbone:
    """Return the registry entry ``name`` (a :class:`Backbone` passes through)."""
    if isinstance(name, Backbone):
        return name
    key = str(name).strip().lower()
    if key not in BACKBONES:
        raise ValueError(
            f"Unknown backbone. Expected one of {sorted(BACKBONES)}. Received: backbone={name!r}"
        )
    return BACKBONES[key]

