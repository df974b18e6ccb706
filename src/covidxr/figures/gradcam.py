"""Figures of Grad-CAM: a heatmap blended over an X-ray, a run's true positives, false
positives and false negatives with their maps, and typical maps against their lung masks.
Must not compute maps or decisions: :mod:`covidxr.gradcam` and
:mod:`covidxr.evaluation.examples` do; this module only draws.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps

from .. import RESEARCH_ONLY
from .common import DATASET_ATTRIBUTION

__all__ = ["GRADCAM_PANEL_PIXELS", "overlay", "plot_gradcam_examples", "plot_gradcam_panel", "plot_lung_mass"]

#: The least side, in pixels, of each image in a saved :func:`plot_gradcam_panel` (at its dpi).
GRADCAM_PANEL_PIXELS = 512


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


def plot_gradcam_panel(image, heatmap, *, name="", probabilities=None, decision="", threshold=None,
                       positive_class=None, dpi=110, cmap="jet"):
    """One image's Grad-CAM, readable: the preprocessed image beside its overlay, each at least
    :data:`GRADCAM_PANEL_PIXELS` px a side when saved at ``dpi``, a colour bar of the map, and a
    title with the probabilities, the decision and the threshold it was taken at.

    Args:
        image: uint8 grey image, shape (S, S) or (S, S, 1).
        heatmap: float map in [0, 1], shape (S, S).
        name: The file's name, shown in the title.
        probabilities: ``{class: probability}``.
        decision: The class decided. threshold: The threshold of a two-class decision (None or NaN:
            arg-max). positive_class: The class the threshold applies to.
        dpi: The resolution the figure is meant to be saved at (sets its size in inches).

    Returns:
        The Matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    side = GRADCAM_PANEL_PIXELS / dpi + 0.2
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.0, side + 0.9), layout="constrained")
    grey = np.asarray(image).squeeze()
    axes[0].imshow(grey, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("image (as the model sees it)", fontsize=9)
    axes[1].imshow(overlay(grey, heatmap, cmap=cmap))
    axes[1].set_title(f"Grad-CAM for '{decision}'", fontsize=9)
    for ax in axes:
        ax.axis("off")
    bar = fig.colorbar(cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=cmap), ax=axes[1], fraction=0.046, pad=0.02)
    bar.set_label("Grad-CAM (relative)", fontsize=8)
    probs = ", ".join(f"P({c}) = {p:.3f}" for c, p in (probabilities or {}).items())
    if threshold is not None and np.isfinite(threshold) and positive_class is not None:
        rule = f"decision: {decision} (P({positive_class}) {'>=' if decision == positive_class else '<'} threshold {threshold:.3f})"
    else:
        rule = f"decision: {decision} (highest probability)"
    fig.suptitle(f"{name}\n{probs}; {rule}. Research use only.", fontsize=9)
    return fig


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


#: Credit line of the collection's lung masks, and of masks the bundled segmenter filled in.
LUNG_MASK_CREDIT = "lungVAE (Selvan et al. 2020, CC BY-SA)"
PREDICTED_MASK_CREDIT = LUNG_MASK_CREDIT + " where the collection has one, covidxr's segmenter elsewhere"


def plot_lung_mass(examples: dict, block: dict, *, run="", mask_credit=LUNG_MASK_CREDIT):
    """Typical Grad-CAM maps with the outline of their lung mask (white) and each image's share
    of mass inside it.

    Args:
        examples: :func:`covidxr.evaluation.lung_mass`'s third result: ``table`` (k rows with
            ``label, prob, mass_inside, mask_area``), ``images`` (k, S, S) uint8, ``maps``
            (k, S, S) in [0, 1], ``masks`` (k, S, S) bool.
        block: Its ``lung_mass`` block (the mean and interval go into the title).
        run: The run's name, for the title.
        mask_credit: Where the masks come from, for the credit line.

    Returns:
        The Matplotlib figure (one panel per image; a note when there are none).
    """
    table = examples["table"]
    k = max(1, len(table))
    fig, axes = plt.subplots(1, k, figsize=(2.4 * k, 3.3), squeeze=False, layout="constrained")
    for j, ax in enumerate(axes[0]):
        ax.set_xticks([])
        ax.set_yticks([])
        if j >= len(table):
            ax.text(0.5, 0.5, "no test image with a usable mask", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes, color="#555555")
            continue
        row = table.iloc[j]
        ax.imshow(overlay(examples["images"][j], examples["maps"][j]))
        mask = np.asarray(examples["masks"][j], dtype=float)
        if 0 < mask.mean() < 1:  # an outline exists
            ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(f"{row['label']}, p={row['prob']:.2f}\ninside {row['mass_inside']:.2f} "
                     f"(lung area {row['mask_area']:.2f})", fontsize=7)
    mean = block["mass_inside"]
    level = block.get("bootstrap", {}).get("level", 0.95)
    fig.suptitle(f"Grad-CAM ({block['class']}) mass inside the lungs · {run}\nmean {mean['value']:.3f} "
                 f"[{mean['ci_low']:.3f}, {mean['ci_high']:.3f}] ({level:.0%}) over {block['n_measured']} test "
                 f"images; the lung area alone: {block['mask_area']['value']:.3f}; images nearest the median shown",
                 fontsize=8)
    fig.supxlabel(f"{DATASET_ATTRIBUTION.rstrip('.')}; lung masks: {mask_credit}\n{RESEARCH_ONLY}",
                  fontsize=6.5)
    return fig
