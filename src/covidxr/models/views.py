"""Views of a built model: its backbone and parts, the feature / head / Grad-CAM sub-models, and
which layers fine-tuning unfreezes. Must not build a new model's weights: every view shares them.
"""

from __future__ import annotations

import keras
from keras import layers

from .registry import LAYER_NAMES, get_backbone

__all__ = ["auto_fine_tune_from", "backbone_layer", "backbone_name", "backbone_output_layer", "feature_model",
           "gradcam_layer", "gradcam_model", "head_model", "resolve_fine_tune_from", "set_trainable_from"]


# --------------------------------------------------------------------------- views of a model

def backbone_layer(model) -> keras.Model:
    """The nested backbone of a model :func:`build_model` made."""
    try:
        return model.get_layer(LAYER_NAMES["backbone"])
    except ValueError as err:
        raise ValueError(
            f"Expected a model made by covidxr.models.build_model (with a nested layer named "
            f"'backbone'). Received: model={model.name!r}"
        ) from err


def backbone_name(model) -> str:
    """The registry name of the backbone inside a :func:`build_model` model."""
    return model.get_layer(LAYER_NAMES["preprocess"]).backbone


def backbone_output_layer(model) -> str:
    """The name of the layer whose output the backbone of ``model`` returns: its feature layer
    when the model was built with ``feature_layer``, else the full backbone's last layer (e.g.
    ``block5_pool``, ``conv5_block3_out``)."""
    base = backbone_layer(model)
    output = base.outputs[0]
    for layer in reversed(base.layers):
        if layer.output is output:
            return layer.name
    return base.layers[-1].name


def gradcam_layer(model) -> str:
    """The layer Grad-CAM explains by default: the registry's ``last_conv_layer`` when the
    backbone holds it, else (a backbone cut below it by ``feature_layer``) the feature layer."""
    base = backbone_layer(model)
    last = get_backbone(backbone_name(model)).last_conv_layer
    if any(layer.name == last for layer in base.layers):
        return last
    return backbone_output_layer(model)


def feature_model(model) -> keras.Model:
    """``uint8 images (b, S, S, 1) -> raw pooled backbone features (b, F)``, no augmentation
    and before the standardisation (which belongs to the head, :func:`head_model`).

    Shares its layers (and weights) with ``model``. With the backbone frozen these features
    never change, so the head can be trained on them once computed (phase 1 caching).
    """
    shape = model.inputs[0].shape[1:]
    inputs = keras.Input(shape, dtype="uint8", name=LAYER_NAMES["input"])
    x = model.get_layer(LAYER_NAMES["to_rgb"])(inputs)
    x = model.get_layer(LAYER_NAMES["preprocess"])(x)
    x = backbone_layer(model)(x, training=False)
    x = model.get_layer(LAYER_NAMES["pooling"])(x)
    return keras.Model(inputs, x, name="features")


def standardize_features(model, x):
    """``model``'s :class:`~covidxr.models.build.FeatureNorm` on pooled features ``x`` (b, F); ``x``
    for models saved before it existed."""
    names = [layer.name for layer in model.layers]
    return model.get_layer(LAYER_NAMES["feature_norm"])(x) if LAYER_NAMES["feature_norm"] in names else x


def head_model(model) -> keras.Model:
    """``raw pooled features (b, F) -> probabilities``: the standardisation, dropout and head
    layers of ``model`` (shared, so training this model trains ``model``'s head)."""
    pool = model.get_layer(LAYER_NAMES["pooling"])
    width = pool.output.shape[-1]
    inputs = keras.Input((width,), name="features")
    x = standardize_features(model, inputs)
    x = model.get_layer(LAYER_NAMES["dropout"])(x)
    x = model.get_layer(LAYER_NAMES["head"])(x)
    return keras.Model(inputs, x, name="head")


def gradcam_model(model, *, layer=None) -> keras.Model:
    """``uint8 images -> [last conv output (b, h, w, k), predictions]`` for Grad-CAM.

    Rebuilds the inference path (no augmentation) of a :func:`build_model` model with the
    backbone split at ``layer`` (default: :func:`gradcam_layer`, the registry's
    ``last_conv_layer`` or the feature layer of a cut backbone); all weights are shared with ``model``.

    Args:
        model: A model from :func:`build_model` (or :func:`covidxr.inference.load_run`).
        layer: Name of a layer inside the backbone whose output is returned.
    """
    base = backbone_layer(model)
    layer = layer or gradcam_layer(model)
    try:
        target = base.get_layer(layer)
    except ValueError as err:
        raise ValueError(
            f"Expected a layer of backbone {backbone_name(model)!r}. Received: layer={layer!r}"
        ) from err
    # (for a backbone cut at its feature layer, both outputs are that layer's output)
    split = keras.Model(base.inputs, [target.output, base.outputs[0]], name="backbone_split")
    shape = model.inputs[0].shape[1:]
    inputs = keras.Input(shape, dtype="uint8", name=LAYER_NAMES["input"])
    x = model.get_layer(LAYER_NAMES["to_rgb"])(inputs)
    x = model.get_layer(LAYER_NAMES["preprocess"])(x)
    conv, x = split(x, training=False)
    x = standardize_features(model, model.get_layer(LAYER_NAMES["pooling"])(x))
    x = model.get_layer(LAYER_NAMES["dropout"])(x)
    preds = model.get_layer(LAYER_NAMES["head"])(x)
    return keras.Model(inputs, [conv, preds], name="gradcam")


# --------------------------------------------------------------------------- fine-tuning

def auto_fine_tune_from(model) -> str:
    """The first layer ``fine_tune_from="auto"`` unfreezes: the first layer of the block that
    holds the backbone's output layer (:func:`backbone_output_layer`; a block is the name
    before its first ``_``: ``block4`` of ``block4_conv3``, ``conv4`` of ``conv4_block6_out``),
    the registry's ``fine_tune_from`` when it lies in that block (the whole backbone:
    ``block5_conv1``, ``conv5_block1_1_conv``), ``"all"`` when no layer name has the prefix."""
    base = backbone_layer(model)
    block = backbone_output_layer(model).split("_")[0] + "_"
    names = [layer.name for layer in base.layers]
    default = get_backbone(backbone_name(model)).fine_tune_from
    if default and default.startswith(block) and default in names:
        return default
    return next((name for name in names if name.startswith(block)), "all")


def resolve_fine_tune_from(model, fine_tune_from="auto") -> int:
    """Index (in ``backbone.layers``) of the first layer unfrozen in phase 2.

    Args:
        model: A :func:`build_model` model.
        fine_tune_from: ``"auto"`` (the last block of the backbone, cut or not:
            :func:`auto_fine_tune_from`), ``"all"`` (the
            whole backbone), a layer name of the backbone, or ``-N`` / ``"-N"`` (the last N
            layers).

    Returns:
        The index; layers from it on are unfrozen.
    """
    base = backbone_layer(model)
    names = [l.name for l in base.layers]
    value = fine_tune_from
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        value = auto_fine_tune_from(model)
    if isinstance(value, str) and value.strip().lower() == "all":
        return 0
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    if number is not None:
        if number >= 0 or -number > len(names):
            raise ValueError(
                f"Expected -N with 1 <= N <= {len(names)} (the backbone's layer count), a layer "
                f"name, 'auto' or 'all'. Received: fine_tune_from={fine_tune_from!r}"
            )
        return len(names) + number
    if value in names:
        return names.index(value)
    close = [n for n in names if str(value).lower() in n.lower()][:5]
    raise ValueError(
        f"Expected a layer name of backbone {backbone_name(model)!r}"
        f"{' (similar: ' + ', '.join(close) + ')' if close else ''}, -N, 'auto' or 'all'. "
        f"Received: fine_tune_from={fine_tune_from!r}"
    )


def set_trainable_from(model, index, *, train_batchnorm=False) -> list[str]:
    """Freeze the backbone below ``index`` and unfreeze it from there, BatchNormalization
    layers excepted (unless ``train_batchnorm``); return the names of the unfrozen backbone layers
    that hold weights.

    Every BatchNormalization layer stays frozen (``trainable=False``), which in Keras 3 also
    makes it run in inference mode: its moving mean and variance (and gamma/beta) never
    change. (Keras 3's functional models pass the outer ``training`` flag down to nested
    models, so ``base(x, training=False)`` alone does not keep BatchNorm in inference mode
    during ``fit``; freezing the layers does.) The head stays trainable.

    ``train_batchnorm=True`` (random weights: their moving statistics are only those of the
    training images they were calibrated on, :func:`covidxr.training.calibrate_batchnorm`) unfreezes
    the BatchNormalization layers from ``index`` too: they train, in training mode.
    """
    base = backbone_layer(model)
    base.trainable = True
    unfrozen = []
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= index and (train_batchnorm or not isinstance(layer, layers.BatchNormalization))
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen
