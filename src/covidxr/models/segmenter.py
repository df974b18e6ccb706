"""A small U-Net lung segmenter: one grey channel in, one lung-probability channel out.
Must not train or write files: it builds, checks and loads models.

:func:`build_unet` is the builder (Ronneberger et al. 2015, with batch normalisation and
half as many levels of filters as the original); :func:`load_segmenter` reads a saved one
with ``safe_mode=True`` after checking its sha256, and the project ships one trained on the
COVID-19 image data collection's lung masks (:data:`BUNDLED_SEGMENTER`, see
``docs/lungs.md`` for its training command and Dice).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
from keras import layers

__all__ = ["BUNDLED_SEGMENTER", "SEGMENTER_SIZE", "build_unet", "load_segmenter", "segmenter_digest"]

#: Input side of the bundled segmenter (grey, pad-resized like every cached image).
SEGMENTER_SIZE = 256
#: The segmenter shipped with the package and the file that pins its sha256.
BUNDLED_SEGMENTER = Path(__file__).with_name("assets") / "lung_unet.keras"
_PIN = BUNDLED_SEGMENTER.with_name("lung_unet.json")


def _block(x, filters, name):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet(*, input_shape=(SEGMENTER_SIZE, SEGMENTER_SIZE, 1), filters=8, depth=4, downsample=2,
               name="lung_unet"):
    """A U-Net for binary segmentation.

    Args:
        input_shape: (S, S, 1); S must be divisible by ``downsample * 2 ** depth``. Inputs are
            uint8-range grey values (0–255); the model rescales them itself.
        filters: Filters of the first level; each deeper level doubles them.
        depth: Number of down-sampling steps.
        downsample: The U-Net works at ``S / downsample`` (average pooling in, bilinear
            up-sampling of the logits out): lung fields are smooth, and a quarter of the
            pixels trains four times faster on a CPU.
        name: The model's name.

    Returns:
        A ``keras.Model`` mapping (batch, S, S, 1) to lung probabilities (batch, S, S, 1).

    Raises:
        ValueError: ``S`` not divisible by ``2 ** depth``, or a non-positive option.
    """
    side = int(input_shape[0])
    if (depth < 1 or filters < 1 or downsample < 1 or side % (downsample * 2 ** depth)
            or tuple(input_shape[1:]) != (side, 1)):
        raise ValueError(f"Expected input_shape (S, S, 1) with S divisible by downsample * 2**depth, and positive "
                         f"filters, depth and downsample. Received: input_shape={tuple(input_shape)}, "
                         f"filters={filters}, depth={depth}, downsample={downsample}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if downsample > 1:
        x = layers.AveragePooling2D(downsample, name="downsample")(x)
    skips = []
    for level in range(depth):
        x = _block(x, filters * 2 ** level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"pool{level}")(x)
    x = _block(x, filters * 2 ** depth, "bottom")
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(filters * 2 ** level, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _block(x, filters * 2 ** level, f"dec{level}")
    x = layers.Conv2D(1, 1, dtype="float32", name="logits")(x)
    if downsample > 1:
        x = layers.UpSampling2D(downsample, interpolation="bilinear", dtype="float32", name="upsample")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="lungs")(x)
    return keras.Model(inputs, outputs, name=name)


def segmenter_digest(path) -> str:
    """The sha256 of a saved segmenter file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_segmenter(path=None, *, sha256=None):
    """Load a lung segmenter offline, with ``safe_mode=True``, after checking its sha256.

    Args:
        path: A ``.keras`` file, or a ``covidxr lungs train`` folder (its ``model.keras`` and
            the sha256 its ``config.json`` records); None: :data:`BUNDLED_SEGMENTER`, checked
            against the pin shipped beside it.
        sha256: The expected digest (overrides the recorded one).

    Returns:
        ``(model, info)``: the Keras model and ``{"path", "sha256", "image_size"}``.

    Raises:
        FileNotFoundError: No such file or folder.
        ValueError: The file's sha256 differs from the expected one (a tampered or damaged file).
    """
    path = BUNDLED_SEGMENTER if path is None else Path(path)
    pin = _PIN if path == BUNDLED_SEGMENTER else None
    if path.is_dir():
        pin, path = path / "config.json", path / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"Expected a lung segmenter (.keras file or `covidxr lungs train` folder). "
                                f"Received: path={str(path)!r}")
    expected = sha256 or (json.loads(pin.read_text())["sha256"] if pin is not None and pin.is_file() else None)
    actual = segmenter_digest(path)
    if expected is not None and actual != expected:
        raise ValueError(f"Expected the lung segmenter's sha256 to be {expected} (the file is damaged or was "
                         f"replaced). Received: sha256={actual} for path={str(path)!r}")
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    return model, {"path": str(path), "sha256": actual, "image_size": int(model.input_shape[1])}
