"""Feature layers: which layer of a backbone the head sits on ("truncated" transfer), its check,
and cutting a backbone there. Must not load weights or build the head: the one model it builds
itself (each backbone once, random weights, at its minimum size) only gives layer names.

``feature_layer=None`` (the default everywhere) keeps the whole backbone. A layer name makes the
head sit on the pooled output of that layer and leaves every layer above it out of the model
(smaller and faster; cf. Raghu, Zhang, Kleinberg and Bengio, "Transfusion: Understanding Transfer
Learning for Medical Imaging", NeurIPS 2019). Any layer of the backbone is accepted; the
registry's ``feature_layers`` are the suggested ones (the outputs of the last blocks).
"""

from __future__ import annotations

import functools

import keras

from .registry import get_backbone

__all__ = ["backbone_layer_names", "check_feature_layer", "normalize_feature_layer", "truncate_backbone"]

#: Values that mean "no feature layer: the whole backbone".
NO_FEATURE_LAYER = ("", "none")


def normalize_feature_layer(value) -> str | None:
    """``None``, ``""`` and ``"none"`` (any case) -> None; a layer name -> the name, stripped.

    Raises:
        ValueError: ``value`` is neither None nor a string.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"Expected feature_layer to be a layer name of the backbone or None. "
                         f"Received: feature_layer={value!r}")
    text = value.strip()
    return None if text.lower() in NO_FEATURE_LAYER else text


def _names(model) -> tuple[str, ...]:
    """The layer names of a backbone model, its input layer left out."""
    return tuple(layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer))


@functools.lru_cache(maxsize=None)
def _cached_names(name: str) -> tuple[str, ...]:
    spec = get_backbone(name)
    size = spec.min_size
    model = spec.constructor(include_top=False, weights=None, input_shape=(size, size, 3), pooling=None)
    return _names(model)


def backbone_layer_names(backbone) -> tuple[str, ...]:
    """Every layer name of a registry backbone (``include_top=False``), input to output.

    Built once per backbone and process (random weights, at the backbone's minimum size: names
    do not depend on the input size), then cached.

    Args:
        backbone: Registry name or :class:`~covidxr.models.Backbone`.
    """
    return _cached_names(get_backbone(backbone).name)


def check_feature_layer(backbone, feature_layer, *, names=None) -> str | None:
    """The checked feature layer of ``backbone``: None (the whole backbone) or a layer name.

    Args:
        backbone: Registry name or :class:`~covidxr.models.Backbone`.
        feature_layer: None / ``"none"`` or a layer name of the backbone.
        names: The backbone's layer names, when a built backbone is at hand (default:
            :func:`backbone_layer_names`).

    Raises:
        ValueError: Not a layer of the backbone; the message lists the registry's candidates
            and similar names.
    """
    value = normalize_feature_layer(feature_layer)
    if value is None:
        return None
    spec = get_backbone(backbone)
    names = backbone_layer_names(spec) if names is None else tuple(names)
    if value in names:
        return value
    close = [n for n in names if value.lower() in n.lower()][:5]
    similar = f"; similar names: {close}" if close else ""
    raise ValueError(
        f"Unknown feature_layer for backbone {spec.name!r}. Expected a layer name of the backbone, e.g. one "
        f"of its candidate feature layers {list(spec.feature_layers)}{similar}. Received: feature_layer={feature_layer!r}"
    )


def truncate_backbone(base, feature_layer, *, backbone):
    """``base`` cut at ``feature_layer``: ``keras.Model(base.inputs, that layer's output)``, named
    like ``base`` and sharing its layers (and weights); ``base`` itself for None or its output layer.

    Args:
        base: A built backbone (``include_top=False``, weights already loaded).
        feature_layer: None / ``"none"`` or a layer name of ``base``.
        backbone: Its registry name (for the error message).

    Returns:
        A model whose output is (b, h, w, k) and whose layers stop at ``feature_layer``.

    Raises:
        ValueError: Not a layer of ``base`` (candidates listed), or its output is not a
            (b, h, w, k) feature map.
    """
    name = check_feature_layer(backbone, feature_layer, names=_names(base))
    if name is None:
        return base
    output = base.get_layer(name).output
    if output is base.outputs[0]:
        return base
    if len(output.shape) != 4:
        raise ValueError(f"Expected a feature layer whose output is a (b, h, w, k) feature map. "
                         f"Received: feature_layer={feature_layer!r}, shape={tuple(output.shape)}")
    return keras.Model(base.inputs, output, name=base.name)
