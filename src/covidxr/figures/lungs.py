"""Lung-field figures: the segmenter's masks against the reference, and image → mask → crop.
Must not compute results or write files: arrays in, a Matplotlib figure out."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .common import DATASET_ATTRIBUTION

__all__ = ["plot_lung_crops", "plot_segmentation"]


def _outline(ax, mask, colour):
    if np.asarray(mask).any():
        ax.contour(np.asarray(mask, float), levels=[0.5], colors=[colour], linewidths=1.2)


def plot_segmentation(images, truth, predicted, *, titles=None):
    """Held-out images with the reference mask (green) and the predicted one (orange) outlined.

    Args:
        images: uint8 (k, S, S).
        truth, predicted: bool (k, S, S).
        titles: Optional k titles (default: each image's Dice).

    Returns:
        The figure.
    """
    k = len(images)
    fig, axes = plt.subplots(1, max(k, 1), figsize=(3.2 * max(k, 1), 3.7), layout="constrained", squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.axis("off")
        if i >= k:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        _outline(ax, truth[i], "#2ecc71")
        _outline(ax, predicted[i], "#e67e22")
        inter, total = np.logical_and(truth[i], predicted[i]).sum(), truth[i].sum() + predicted[i].sum()
        ax.set_title(titles[i] if titles else f"Dice {2 * inter / max(total, 1):.3f}", fontsize=10)
    fig.suptitle("Lung masks on held-out images: reference (green), U-Net (orange)", fontsize=11)
    fig.text(0.5, 0.005, DATASET_ATTRIBUTION, ha="center", va="bottom", fontsize=6, color="#555")
    return fig


def plot_lung_crops(images, masks, crops, *, names=None, mode="crop"):
    """For each sample: the image, its lung mask outlined, and what ``--lungs`` keeps.

    Args:
        images: uint8 (H_i, W_i) decoded images.
        masks: bool (H_i, W_i) lung masks.
        crops: uint8 arrays, what ``--lungs crop|mask`` keeps of each image.
        names: Optional titles (file names).
        mode: ``crop`` or ``mask``, for the column title.

    Returns:
        The figure (one row per sample, three columns).
    """
    k = len(images)
    fig, axes = plt.subplots(max(k, 1), 3, figsize=(8.4, 2.9 * max(k, 1)), layout="constrained", squeeze=False)
    for i in range(k):
        left, middle, right = axes[i]
        left.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        name = names[i] if names else "image"
        left.set_title(name if len(name) <= 32 else name[:29] + "…", fontsize=9)
        middle.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        _outline(middle, masks[i], "#e67e22")
        middle.set_title(f"lungs: {np.mean(masks[i]):.0%} of the image", fontsize=9)
        right.imshow(crops[i], cmap="gray", vmin=0, vmax=255)
        right.set_title(f"--lungs {mode}: {crops[i].shape[1]}×{crops[i].shape[0]} px", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.text(0.5, 0.0, DATASET_ATTRIBUTION, ha="center", va="bottom", fontsize=6, color="#555")
    return fig
