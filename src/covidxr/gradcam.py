"""Grad-CAM heatmaps: where in the X-ray the model's evidence for a class lies.
Must not draw: it returns the maps as arrays (overlays are :func:`covidxr.figures.overlay`).

Grad-CAM weights the feature maps of a convolutional layer (by default the backbone's last
one, from the registry, or the feature layer of a model cut there) by the spatially averaged
gradient of the class score, sums them and keeps the positive part:

    Selvaraju, R. R., Cogswell, M., Das, A., Vedantam, R., Parikh, D. and Batra, D.
    "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization."
    ICCV 2017, pp. 618-626. arXiv:1610.02391.

The class score is the head's pre-activation (the logit; for a sigmoid head the score of
class 0 is minus the logit), as in the paper, so saturated probabilities do not zero the
gradients. Gradients are backend-specific in Keras 3: this module is one of the few places
that branches on ``keras.backend.backend()`` (TensorFlow, JAX and PyTorch are supported).

A heatmap shows where the model looked, not why, and not whether it was right: a map on a
text marker or the image border is a warning sign of a shortcut.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from .models import LAYER_NAMES, backbone_name, backbone_layer, gradcam_layer, standardize_features

__all__ = ["float32_model", "gradcam", "gradcam_parts"]


def gradcam_parts(model, *, layer=None):
    """Split a :func:`covidxr.models.build_model` model at a convolutional layer.

    Args:
        model: A model from ``build_model`` (or ``covidxr.inference.load_run``).
        layer: Layer of the backbone to explain (default: :func:`covidxr.models.gradcam_layer`:
            the registry's last conv layer, or the feature layer of a model built with one).

    Returns:
        ``(front, rest, head)``: ``front`` maps uint8 images (b, S, S, 1) to the layer's
        output (b, h, w, k) without augmentation; ``rest`` maps that output to the pooled,
        standardised, dropped-out features (b, F); ``head`` is the model's Dense head layer.
        Weights are shared with ``model``.

    Raises:
        ValueError: The layer is not in the backbone, or the backbone cannot be split there
            (a skip connection crosses it).
    """
    base = backbone_layer(model)
    backbone = backbone_name(model)
    layer = layer or gradcam_layer(model)
    try:
        target = base.get_layer(layer)
    except ValueError as err:
        raise ValueError(f"Expected a layer of backbone {backbone!r}. Received: layer={layer!r}") from err

    shape = model.inputs[0].shape[1:]
    inputs = keras.Input(shape, dtype="uint8")
    x = model.get_layer(LAYER_NAMES["to_rgb"])(inputs)
    x = model.get_layer(LAYER_NAMES["preprocess"])(x)
    conv = keras.Model(base.inputs, target.output)(x)
    front = keras.Model(inputs, conv, name="gradcam_front")

    conv_in = keras.Input(target.output.shape[1:])
    y = conv_in
    if target.output is not base.outputs[0]:
        try:
            tail = keras.Model(target.output, base.outputs[0])
        except ValueError as err:
            raise ValueError(
                f"Cannot split backbone {backbone!r} at this layer (a connection bypasses it); "
                f"choose a layer at a block boundary. Received: layer={layer!r}"
            ) from err
        y = tail(y)
    y = standardize_features(model, model.get_layer(LAYER_NAMES["pooling"])(y))
    y = model.get_layer(LAYER_NAMES["dropout"])(y)
    rest = keras.Model(conv_in, y, name="gradcam_rest")
    return front, rest, model.get_layer(LAYER_NAMES["head"])


def _scores(features, kernel, bias, classes, binary):
    """Per-image class scores (pre-activation), summed over the batch."""
    logits = ops.matmul(features, kernel) + bias
    if binary:
        sign = ops.cast(2 * classes - 1, logits.dtype)  # class 1: +logit, class 0: -logit
        return ops.sum(logits[:, 0] * sign)
    onehot = ops.one_hot(classes, logits.shape[-1], dtype=logits.dtype)
    return ops.sum(logits * onehot)


def _gradients(rest, head, conv, classes, binary):
    """d score / d conv, shape of ``conv``, on the active backend."""
    backend = keras.backend.backend()
    kernel, bias = head.kernel, head.bias
    if backend == "tensorflow":
        import tensorflow as tf

        conv = tf.convert_to_tensor(conv)
        with tf.GradientTape() as tape:
            tape.watch(conv)
            score = _scores(rest(conv, training=False), kernel, bias, classes, binary)
        return tape.gradient(score, conv)
    if backend == "jax":
        import jax

        trainable = [v.value for v in rest.trainable_variables]
        frozen = [v.value for v in rest.non_trainable_variables]
        k, b = kernel.value, bias.value

        def score_fn(c):
            features, _ = rest.stateless_call(trainable, frozen, c, training=False)
            return _scores(features, k, b, classes, binary)

        return jax.grad(score_fn)(conv)
    if backend == "torch":
        import torch

        conv = conv.detach().clone().requires_grad_(True)
        score = _scores(rest(conv, training=False), kernel, bias, classes, binary)
        (grad,) = torch.autograd.grad(score, conv)
        return grad
    raise ValueError(
        f"Grad-CAM supports the tensorflow, jax and torch backends. Received: backend={backend!r}"
    )


def _resize(maps, size):
    """Bilinear resize of (b, h, w) float maps to (b, size, size)."""
    from PIL import Image

    out = np.empty((len(maps), size, size), np.float32)
    for i, m in enumerate(maps):
        out[i] = np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
    return out


def _mixed_to_float32(config):
    """``config`` (a Keras model config) with every mixed-precision dtype policy made float32;
    ``(config, changed)``."""
    if isinstance(config, dict):
        name = str((config.get("config") or {}).get("name", ""))
        if config.get("class_name") == "DTypePolicy" and name.startswith("mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}, True
        pairs = [(k, *_mixed_to_float32(v)) for k, v in config.items()]
        return {k: v for k, v, _ in pairs}, any(c for _, _, c in pairs)
    if isinstance(config, list):
        pairs = [_mixed_to_float32(v) for v in config]
        return [v for v, _ in pairs], any(c for _, c in pairs)
    return config, False


def float32_model(model):
    """``model`` when every layer computes in float32; else (a model built or loaded under mixed
    precision: bfloat16 or float16 convolutions) a copy whose layers compute in float32, with the
    same weights (mixed precision keeps its variables in float32, so nothing is rounded).

    Grad-CAM multiplies feature maps by averaged gradients: in bfloat16 (8 bits of mantissa) the
    maps were off by up to 4.7% of their maximum; :func:`gradcam` therefore always runs in float32.
    """
    config, changed = _mixed_to_float32(model.get_config())
    if not changed:
        return model
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def gradcam(model, images, *, class_index=None, layer=None, batch_size=16):
    """Grad-CAM heatmaps for a batch of images.

    Args:
        model: A model from :func:`covidxr.models.build_model` / ``covidxr.inference.load_run``.
        images: uint8 grey images, shape (n, S, S, 1) or (n, S, S) or one (S, S) image.
        class_index: Class to explain: an int, an int array of shape (n,), or None for each
            image's predicted class.
        layer: Backbone layer to explain (default: the registry's last conv layer; the feature
            layer of a model built with ``feature_layer``).
        batch_size: Images per gradient computation.

    The maps are computed in float32 also for a model built or loaded under mixed precision
    (:func:`float32_model`).

    Returns:
        ``(heatmaps, probabilities)``: heatmaps float32 of shape (n, S, S), each scaled to
        [0, 1] (all zeros where no positive evidence was found); probabilities of shape
        (n, C) (two-class models: columns [1 - p, p]).
    """
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None, ..., None]
    elif images.ndim == 3:
        images = images[..., None]
    size = int(model.inputs[0].shape[1])
    if images.ndim != 4 or images.shape[1:] != (size, size, 1):
        raise ValueError(
            f"Expected uint8 images of shape (n, {size}, {size}, 1). Received: images.shape={images.shape}"
        )
    front, rest, head = gradcam_parts(float32_model(model), layer=layer)  # float32 even under mixed precision
    binary = head.units == 1
    num_classes = 2 if binary else head.units
    heatmaps, probabilities = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype("uint8")
        conv = front(batch, training=False)
        features = rest(conv, training=False)
        logits = ops.convert_to_numpy(ops.matmul(features, head.kernel) + head.bias).astype(np.float64)
        if binary:
            p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            probs = np.stack([1 - p, p], axis=1)
        else:
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
        if class_index is None:
            classes = probs.argmax(axis=1)
        else:
            classes = np.broadcast_to(np.asarray(class_index), (len(images),))[start:start + len(batch)]
            if classes.min() < 0 or classes.max() >= num_classes:
                raise ValueError(
                    f"Expected class_index in [0, {num_classes}). Received: class_index={class_index!r}"
                )
        grads = ops.convert_to_numpy(_gradients(rest, head, conv, ops.convert_to_tensor(classes.astype("int32")), binary))
        conv = ops.convert_to_numpy(conv)
        weights = grads.mean(axis=(1, 2), keepdims=True)
        cam = np.maximum((conv * weights).sum(axis=-1), 0.0)
        heatmaps.append(_resize(cam, size))
        probabilities.append(probs)
    maps = np.concatenate(heatmaps)
    maps = np.nan_to_num(np.maximum(maps, 0.0))
    top = maps.reshape(len(maps), -1).max(axis=1)
    maps = np.where(top[:, None, None] > 0, maps / np.where(top > 0, top, 1)[:, None, None], 0.0)
    return maps.astype(np.float32), np.concatenate(probabilities).astype(np.float32)
