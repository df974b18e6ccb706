"""Transfer-learning models: a registry of ``keras.applications`` backbones, one builder, and
views of a built model. Must not read data or train: it builds models and gives views of them.

* :mod:`.registry`: :data:`BACKBONES` (name -> :class:`Backbone`), :data:`LAYER_NAMES`.
* :mod:`.build`: :func:`build_model`, :func:`build_augmentation` and the custom layers.
* :mod:`.features`: ``feature_layer`` (truncated transfer): :func:`check_feature_layer`,
  :func:`backbone_layer_names`, :func:`truncate_backbone`.
* :mod:`.views`: :func:`backbone_layer`, :func:`feature_model`, :func:`head_model`,
  :func:`gradcam_model`, :func:`gradcam_layer`, :func:`resolve_fine_tune_from`,
  :func:`set_trainable_from`.

Importing this package registers the custom layers, so a saved model reloads with
``keras.saving.load_model(path, safe_mode=True)``.
"""

from __future__ import annotations

from .build import BackbonePreprocess, FeatureNorm, GreyToRGB, build_augmentation, build_model, check_weights_file
from .features import backbone_layer_names, check_feature_layer, normalize_feature_layer, truncate_backbone
from .registry import BACKBONES, LAYER_NAMES, Backbone, get_backbone
from .views import (auto_fine_tune_from, backbone_layer, backbone_name, backbone_output_layer, feature_model,
                    gradcam_layer, gradcam_model, head_model, resolve_fine_tune_from, set_trainable_from,
                    standardize_features)

__all__ = [
    "BACKBONES",
    "LAYER_NAMES",
    "Backbone",
    "BackbonePreprocess",
    "FeatureNorm",
    "GreyToRGB",
    "auto_fine_tune_from",
    "backbone_layer",
    "backbone_layer_names",
    "backbone_output_layer",
    "build_augmentation",
    "build_model",
    "backbone_name",
    "check_feature_layer",
    "check_weights_file",
    "feature_model",
    "get_backbone",
    "gradcam_layer",
    "gradcam_model",
    "head_model",
    "normalize_feature_layer",
    "resolve_fine_tune_from",
    "set_trainable_from",
    "standardize_features",
    "truncate_backbone",
]
