"""Training numbers for the lung segmenter: image/mask arrays, the loss, Dice and IoU.
Must not write files or draw: arrays in, a trained model and numbers out.

Images go through the same decoding and pad-resize as every cached image
(:func:`covidxr.images.load_image`, :func:`covidxr.images.preprocess`); masks through
:func:`covidxr.evaluation.lungs.prepare_mask`'s geometry, so a predicted mask lies on the
image exactly as a mask file would.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..images import load_image, preprocess
from ..images.lungs import prepare_mask

__all__ = ["dice_iou", "fit_segmenter", "segmentation_arrays"]


def segmentation_arrays(pairs: pd.DataFrame, *, image_size) -> tuple[np.ndarray, np.ndarray]:
    """Decode image/mask pairs into training arrays.

    Args:
        pairs: Columns ``path`` (image file) and ``mask`` (mask file), shape (n rows).
        image_size: Side of the square arrays.

    Returns:
        ``(images, masks)``: uint8 (n, S, S, 1) and float32 (n, S, S, 1) in {0, 1}.
    """
    from PIL import Image

    images, masks = [], []
    for path, mask in zip(pairs["path"], pairs["mask"]):
        grey = load_image(path)
        images.append(preprocess(grey, image_size=image_size))
        with Image.open(mask) as m:
            masks.append(prepare_mask(m, image_shape=grey.shape, image_size=image_size))
    return np.stack(images)[..., None], np.stack(masks)[..., None].astype(np.float32)


def dice_iou(predicted, truth) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of binary masks.

    Args:
        predicted, truth: bool-like arrays (n, S, S) or (n, S, S, 1).

    Returns:
        ``(dice, iou)``, float64 of shape (n,); 1.0 where both masks are empty.
    """
    p = np.asarray(predicted).astype(bool).reshape(len(predicted), -1)
    t = np.asarray(truth).astype(bool).reshape(len(truth), -1)
    inter = (p & t).sum(axis=1).astype(float)
    total = p.sum(axis=1) + t.sum(axis=1)
    union = (p | t).sum(axis=1)
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return dice, iou


def _soft_dice_loss(y_true, y_pred):
    from keras import ops

    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    return 1.0 - (2.0 * inter + 1.0) / (total + 1.0)


def segmentation_loss(y_true, y_pred):
    """Binary cross-entropy plus soft Dice, per image."""
    import keras

    bce = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    return bce + _soft_dice_loss(y_true, y_pred)


def _shifted(images, masks, rng):
    """Horizontal flips and shifts of up to 1/16 of the side, the same for image and mask."""
    flip = rng.random(len(images)) < 0.5
    images, masks = images.copy(), masks.copy()
    images[flip], masks[flip] = images[flip, :, ::-1], masks[flip, :, ::-1]
    side = images.shape[1]
    for i, (dy, dx) in enumerate(rng.integers(-side // 16, side // 16 + 1, size=(len(images), 2))):
        images[i] = np.roll(images[i], (dy, dx), axis=(0, 1))
        masks[i] = np.roll(masks[i], (dy, dx), axis=(0, 1))
    return images.astype("float32"), masks


def _batches(images, masks, *, batch_size, seed):
    """A ``keras.utils.PyDataset`` of shuffled, flipped and shifted batches, new draws every epoch."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(images))

        def __len__(self):
            return int(np.ceil(len(images) / batch_size))

        def __getitem__(self, index):
            rows = self.order[index * batch_size: (index + 1) * batch_size]
            return _shifted(images[rows], masks[rows], self.rng)

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(images))

    return Batches()


def fit_segmenter(model, images, masks, *, epochs=40, batch_size=8, learning_rate=1e-3, seed=0, verbose=0) -> list[dict]:
    """Train a segmenter with Adam on BCE + soft Dice, with flips and shifts.

    Args:
        model: :func:`covidxr.models.segmenter.build_unet`'s model.
        images, masks: :func:`segmentation_arrays`'s arrays (n, S, S, 1).
        epochs, batch_size, learning_rate, seed: Training options (a cosine-decayed rate).
        verbose: Keras verbosity.

    Returns:
        One ``{"epoch", "loss"}`` row per epoch.
    """
    import keras

    keras.utils.set_random_seed(seed)
    batches = _batches(images, masks, batch_size=batch_size, seed=seed)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=len(batches) * epochs, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=segmentation_loss)
    logs = model.fit(batches, epochs=epochs, verbose=verbose)
    return [{"epoch": i + 1, "loss": float(v)} for i, v in enumerate(logs.history["loss"])]
