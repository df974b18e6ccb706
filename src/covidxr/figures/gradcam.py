"""Figures of Grad-CAM: a heatmap blended over an X-ray, and a run's true positives, false
positives and false negatives with their maps.
Must not compute maps or decisions: :mod:`covidxr.gradcam` and
:mod:`covidxr.evaluation.examples` do; this module only draws.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps

from .. import RESEARCH_ONLY
from .common import DATASET_ATTRIBUTION

__all__ = ["overlay", "plot_gradcam_examples"]


def overlay(image, heatmap, *, alpha=0.4, cmap="jet"):
    """Blend a heatmap over a grey image.

    Args:
        image: uint8 grey image, shape (S, S) or (S, S, 1).
        heatmap: float map in [0, 1], shape (S, S).
        alpha: Weight of the heatmap colour.
        cmap: Matplotlib colour map name.

    Returns:
        uint8 RGB image, shape (S, S, 3).
    """
    grey = np.asarray(image).squeeze().astype(np.float32) / 255.0
    heat = np.asarray(heatmap, dtype=np.float32)
    if grey.shape != heat.shape:
        raise ValueError(f"Expected image and heatmap of the same shape. Received: shapes={grey.shape}, {heat.shape}")
    colour = colormaps[cmap](np.clip(heat, 0, 1))[..., :3]
    blended = (1 - alpha) * grey[..., None] + alpha * colour
    return (np.clip(blended, 0, 1) * 255).round().astype(np.uint8)


def plot_gradcam_examples(run_dir, *, n=3, part="test", seed=0, threshold_method="youden", data_dir=None,
                          examples=None):
    """Grad-CAM for the positive class on true positives, false positives and false negatives.

    One row per category (TP / FP / FN), ``n`` image pairs per row: the preprocessed image
    the model saw, with its label and probability, and the Grad-CAM overlay. A category
    without examples is drawn as empty panels with a note. The figure carries the dataset
    attribution (:data:`DATASET_ATTRIBUTION`).

    Args:
        run_dir: A run folder.
        n, part, seed, threshold_method, data_dir: See :func:`select_gradcam_examples`.
        examples: A :func:`select_gradcam_examples` result to draw (skips recomputing).

    Returns:
        The Matplotlib figure (its ``gradcam_examples`` attribute holds the examples' table).
    """
    from ..evaluation.examples import GRADCAM_CATEGORIES, select_gradcam_examples  # Keras: on first use

    ex = examples or select_gradcam_examples(run_dir, n=n, part=part, seed=seed,
                                             threshold_method=threshold_method, data_dir=data_dir)
    n = max(int(n), int(ex["table"].groupby("category").size().max()) if len(ex["table"]) else 1)
    fig, axes = plt.subplots(len(GRADCAM_CATEGORIES), 2 * n, figsize=(2.0 * 2 * n, 2.35 * len(GRADCAM_CATEGORIES) + 0.9),
                             squeeze=False, layout="constrained")
    table = ex["table"].reset_index(drop=True)
    threshold = ex["threshold"]
    rule = (f"called {ex['positive_class']} when p >= {threshold:.3f} (validation threshold)"
            if threshold is not None else "arg-max decision")
    for r, (key, title, empty_note) in enumerate(GRADCAM_CATEGORIES):
        picked = table.index[table["category"] == key].tolist()
        for c in range(2 * n):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            for spine in axes[r, c].spines.values():
                spine.set_visible(False)
        axes[r, 0].set_ylabel(f"{key}: {title}\n({ex['counts'][key]} in {ex['part']})", fontsize=8)
        if not picked:
            axes[r, 0].text(0.02, 0.5, f"{empty_note}\nin the {ex['part']} part", fontsize=8,
                            transform=axes[r, 0].transAxes, va="center", ha="left", color="#555555")
            continue
        for j, k in enumerate(picked):
            row = table.loc[k]
            axes[r, 2 * j].imshow(ex["images"][k], cmap="gray", vmin=0, vmax=255)
            axes[r, 2 * j].set_title(f"{row['label']}, p={row['prob']:.3f}", fontsize=7)
            axes[r, 2 * j + 1].imshow(overlay(ex["images"][k], ex["maps"][k]))
            empty_map = not float(np.max(ex["maps"][k])) > 0
            axes[r, 2 * j + 1].set_title("Grad-CAM (no positive evidence)" if empty_map else "Grad-CAM",
                                         fontsize=7)
    fig.suptitle(f"Grad-CAM ({ex['positive_class']}) · {ex['run']}\n{rule}", fontsize=9)
    fig.supxlabel(f"{DATASET_ATTRIBUTION}\n{RESEARCH_ONLY}", fontsize=6.5)
    fig.gradcam_examples = table
    return fig
