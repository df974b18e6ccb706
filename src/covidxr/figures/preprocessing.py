"""Figures of preprocessing and class balance.
Must not change data: it draws what the images and sampling layers return.

Raw images beside their preprocessed versions (:func:`plot_preprocessing`), the effect of each
contrast setting (:func:`plot_contrast`), augmented variants of one image
(:func:`plot_augmentations`) and the images per class in one epoch under each imbalance
strategy (:func:`plot_epoch_balance`). These functions only draw: no logic here changes data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..images import CONTRASTS, load_image, preprocess

__all__ = [
    "plot_augmentations",
    "plot_contrast",
    "plot_epoch_balance",
    "plot_preprocessing",
]


def plot_preprocessing(paths, *, image_size=224, resize="pad", contrast=None, titles=None):
    """Raw images (top row) beside their preprocessed versions (bottom row).

    Args:
        paths: Image files (a few).
        image_size, resize, contrast: As :func:`covidxr.images.preprocess`.
        titles: Optional column titles (e.g. labels).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    import textwrap

    paths = list(paths)
    fig, axes = plt.subplots(2, len(paths), figsize=(2.8 * len(paths), 6.2), squeeze=False, layout="constrained")
    for j, path in enumerate(paths):
        grey = load_image(path)
        name = str(titles[j] if titles else Path(path).name)
        name = name if len(name) <= 60 else name[:57] + "..."
        axes[0, j].imshow(grey, cmap="gray", vmin=0, vmax=255)
        axes[0, j].set_title("\n".join(textwrap.wrap(name, 24)[:3]) + f"\n{grey.shape[1]}x{grey.shape[0]} px", fontsize=7)
        axes[1, j].imshow(preprocess(grey, image_size=image_size, resize=resize, contrast=contrast),
                          cmap="gray", vmin=0, vmax=255)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"top: as stored; bottom: {resize} to {image_size} px, contrast {contrast}", fontsize=9)
    return fig


def plot_contrast(paths, *, image_size=224, resize="pad"):
    """One row per image, one column per contrast setting (:data:`covidxr.images.CONTRASTS`),
    with histograms (the y axis is scaled to the bins above the first, which holds the padding).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    paths = list(paths)
    fig, axes = plt.subplots(len(paths), 2 * len(CONTRASTS), figsize=(3.0 * len(CONTRASTS) * 2, 2.4 * len(paths)),
                             squeeze=False)
    for i, path in enumerate(paths):
        grey = load_image(path)
        for j, contrast in enumerate(CONTRASTS):
            out = preprocess(grey, image_size=image_size, resize=resize, contrast=contrast)
            axes[i, 2 * j].imshow(out, cmap="gray", vmin=0, vmax=255)
            axes[i, 2 * j].axis("off")
            axes[i, 2 * j].set_title(f"contrast={contrast}", fontsize=8)
            counts, _, _ = axes[i, 2 * j + 1].hist(out.ravel(), bins=64, range=(0, 256), color="0.3")
            # the first bin holds the padding: scale the axis to the others
            axes[i, 2 * j + 1].set_ylim(0, 1.15 * max(counts[1:].max(), 1))
            axes[i, 2 * j + 1].set_yticks([])
    fig.tight_layout()
    return fig


def plot_augmentations(image, *, augmentation, n_variants=8, columns=4, seed=0):
    """A grid of random augmented variants of one cached image (the original first).

    Args:
        image: ``uint8`` array (S, S) or (S, S, 1), e.g. ``cache.select([key])[0]``.
        augmentation: A Keras layer or model taking float (b, S, S, 1) images in 0..255,
            e.g. ``covidxr.models.build_augmentation(seed=0)``; called with ``training=True``.
        n_variants: Number of augmented variants.
        columns: Images per row.
        seed: Seeds Keras' global generator (``keras.utils.set_random_seed``) for a
            reproducible grid.

    Returns:
        The matplotlib Figure.
    """
    import keras
    import matplotlib.pyplot as plt

    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., 0]
    keras.utils.set_random_seed(seed)
    batch = np.repeat(image[None, :, :, None].astype("float32"), n_variants, axis=0)
    variants = keras.ops.convert_to_numpy(augmentation(batch, training=True))[..., 0]
    tiles = [image] + list(variants)
    rows = int(np.ceil(len(tiles) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, tile) in enumerate(zip(axes.flat, tiles)):
        ax.imshow(np.clip(tile, 0, 255), cmap="gray", vmin=0, vmax=255)
        ax.set_title("original" if k == 0 else f"variant {k}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_epoch_balance(counts: pd.DataFrame, *, epoch=0):
    """Bar plot of images per class in one epoch under each strategy.

    Args:
        counts: :func:`covidxr.sampling.epoch_class_counts` output.
        epoch: Which epoch to show.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    table = counts[counts["epoch"] == epoch].pivot(index="strategy", columns="class", values="images")
    from ..sampling import STRATEGIES  # Keras (sampling's batches): only for this figure

    table = table.loc[[s for s in STRATEGIES if s in table.index]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    table.plot.bar(ax=ax, rot=0)
    ax.set_ylabel(f"images in epoch {epoch}")
    ax.set_title("Class balance per epoch under each strategy")
    fig.tight_layout()
    return fig
