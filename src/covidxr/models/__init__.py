"""Transfer-learning models: a registry of ``keras.applications`` backbones, one builder, and
views of a built model. Must not read data or train: it builds models and gives views of them.

* :mod:`.registry`: :data:`BACKBONES` (name -> :class:`Backbone`), :data:`LAYER_NAMES`.
* :mod:`.build`: :func:`build_model`, :func:`build_augmentation` and the custom layers.
* :mod:`.views`: :func:`backbone_layer`, :func:`feature_model`, :func:`head_model`,
  :func:`gradcam_model`, :func:`resolve_fine_tune_from`, :func:`set_trainable_from`.

Importing this package registers the custom layers, so a saved model reloads with
``keras.saving.load_model(path, safe_mode=True)``.
"""

from __future__ import annotations

from .build import BackbonePreprocess, GreyToRGB, build_augmentation, build_model
from .registry import BACKBONES, LAYER_NAMES, Backbone, get_backbone
from .views import (backbone_layer, backbone_name, feature_model, gradcam_model, head_model,
                    resolve_fine_tune_from, set_trainable_from)

__all__ = [
    "BACKBONES",
    "LAYER_NAMES",
    "Backbone",
    "BackbonePreprocess",
    "GreyToRGB",
    "backbone_layer",
    "build_augmentation",
    "build_model",
    "backbone_name",
    "feature_model",
    "get_backbone",
    "gradcam_model",
    "head_model",
    "resolve_fine_tune_from",
    "set_trainable_from",
]
