"""Phase 1's frozen features: the one function that runs the frozen backbone over images, and
the feature store's key of a built model. Must not read datasets or make run folders: it turns
a built model and cached images into raw pooled features (:mod:`covidxr.images.feature_store`
keeps them).

The features are those of :func:`covidxr.models.feature_model`: grey to RGB, the backbone's
``preprocess_input``, the frozen backbone in inference mode and the pooling, **no augmentation**
(the augmentation layers act in phase 2 only) and before the head's standardisation, which
each run adapts to its own training part. So they depend only on the pixels and on what
:func:`feature_parts` lists, and every run with the same parts can share them.
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np

from ..images import FeatureStore, decode, image_ids
from ..images.lungs import LUNG_GEOMETRY
from ..models import LAYER_NAMES, backbone_layer, backbone_name, backbone_output_layer, feature_model
from .batches import make_sequence, predict_batches

__all__ = ["FEATURE_CHUNK_BATCHES", "feature_parts", "pooled_features", "stored_features"]

#: Batches per step of the feature progress bar (:func:`pooled_features`).
FEATURE_CHUNK_BATCHES = 4


def pooled_features(model, images, *, batch_size) -> np.ndarray:
    """Raw pooled frozen-backbone features (n, F) float32 of uint8 images (n, S, S, 1): one
    forward pass of :func:`covidxr.models.feature_model` in padded batches. Every phase-1
    feature computation goes through this function. On a terminal a progress bar (tqdm, on
    stderr, cleared when done) counts the images; every batch but the last is full, as in one pass."""
    from tqdm import tqdm

    images = np.asarray(images)
    extractor, chunk, parts = feature_model(model), batch_size * FEATURE_CHUNK_BATCHES, []
    with tqdm(total=len(images), desc="backbone features", unit="img", leave=False, disable=None) as bar:
        for start in range(0, max(len(images), 1), chunk):
            rows = images[start:start + chunk]
            sequence = make_sequence(rows, np.zeros(len(rows), np.int64), num_classes=2, batch_size=batch_size)
            parts.append(np.asarray(predict_batches(extractor, sequence, batch_size=batch_size), dtype=np.float32))
            bar.update(len(rows))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _weights_digest(model) -> str:
    """sha256 of the backbone's weights as they are (random weights have no file to hash)."""
    digest = hashlib.sha256()
    for array in backbone_layer(model).get_weights():
        digest.update(repr((array.shape, array.dtype.str)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def feature_parts(model, *, resize, contrast, seed, lungs="none") -> dict:
    """What the raw pooled features of a :func:`covidxr.models.build_model` model depend on:
    the feature store's key parts.

    Args:
        model: The built model, backbone weights as loaded (phase 1 never changes them).
        resize: The cache's ``resize`` (``"pad"``/``"crop"``). contrast: Its contrast (None, ``"clahe"``).
        seed: The run's seed (random weights come from it).

    Returns:
        A dict: ``backbone``, ``weights`` (``source`` and the ``sha256`` of the weights file
        loaded; random weights: ``source`` ``"none"``, the ``seed`` and the sha256 of the
        initial weights themselves), ``feature_layer`` (the layer the backbone ends at),
        ``pooling``, ``image_size``, ``resize``, ``contrast``, ``decoder_version``,
        ``dtype_policy``, ``keras_backend`` and ``keras_version``; ``lungs`` and ``lung_geometry``
        (:data:`~covidxr.images.lungs.LUNG_GEOMETRY`) for a ``--lungs crop|mask`` run (absent
        otherwise, so whole-image keys stay as they were).
    """
    info = dict(getattr(model, "covidxr_weights", None) or {})
    if info.get("sha256"):
        weights = {"source": info.get("source"), "sha256": info["sha256"]}
    else:
        weights = {"source": "none", "seed": int(seed), "sha256": _weights_digest(model)}
    pooling = model.get_layer(LAYER_NAMES["pooling"])
    return {"backbone": backbone_name(model), "weights": weights, "feature_layer": backbone_output_layer(model),
            "pooling": "max" if isinstance(pooling, keras.layers.GlobalMaxPooling2D) else "avg",
            "image_size": int(model.inputs[0].shape[1]), "resize": resize, "contrast": contrast,
            "decoder_version": decode.DECODER_VERSION, "dtype_policy": backbone_layer(model).dtype_policy.name,
            "keras_backend": keras.backend.backend(), "keras_version": keras.__version__,
            **({} if lungs == "none" else {"lungs": lungs, "lung_geometry": LUNG_GEOMETRY})}


def stored_features(model, images, *, cache_dir, resize, contrast, seed, batch_size, lungs="none") -> tuple[np.ndarray, dict]:
    """The raw pooled features (n, F) of ``images`` from the feature store of ``cache_dir``;
    those it lacks are computed (:func:`pooled_features`) and stored.

    Args:
        model: The built model (see :func:`feature_parts`).
        images: uint8 (n, S, S, 1) cached images (e.g. every image of the run's cache).
        cache_dir: The cache folder the store lives in. resize, contrast, seed, lungs: see :func:`feature_parts`.
        batch_size: Batch size of the forward pass.

    Returns:
        ``(features, info)``; info as :meth:`covidxr.images.FeatureStore.features`.
    """
    store = FeatureStore(feature_parts(model, resize=resize, contrast=contrast, seed=seed, lungs=lungs), cache_dir=cache_dir)
    images = np.asarray(images)
    return store.features(image_ids(images), lambda rows: pooled_features(model, images[rows], batch_size=batch_size))
