"""What every figure shares: the dataset attribution, class colours, new axes, atomic saving.
Must not compute results: the figures modules draw what the lower layers return.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ..atomic import atomic_path

__all__ = ["CATEGORY_COLOURS", "DATASET_ATTRIBUTION", "LEVEL_COLOURS", "class_colour", "new_axes", "run_label",
           "save_figure"]

#: Attribution printed under every figure that shows images from the collection.
DATASET_ATTRIBUTION = (
    "Images: COVID-19 Image Data Collection (Cohen et al., arXiv:2006.11988); "
    "each image under its own licence (see metadata.csv)."
)

#: One colour per class in every figure (EDA, preprocessing, ROC, precision-recall, calibration).
CATEGORY_COLOURS = {"covid": "#c0392b", "normal": "#2e86c1", "other": "#7d8c8d", "non-covid": "#8e44ad"}

#: Per-image and per-patient points of a comparison (not class colours).
LEVEL_COLOURS = {"image": "#222222", "patient": "#e67e22"}


def class_colour(name, default="#999999") -> str:
    """The colour of a class in every figure (:data:`CATEGORY_COLOURS`)."""
    return CATEGORY_COLOURS.get(str(name), default)


def run_label(config) -> str:
    """A run named by what it is, not by its folder: backbone, weights, feature layer, image size
    and strategy (and fold), e.g. ``"vgg16 · hed · block4_conv3 · 224 px · class-weight"``
    (``full``: no feature layer, the whole backbone).

    Args:
        config: A run's ``config.json`` record, or a comparison row (a dict or pandas Series).
    """
    def get(key):  # NaN (a blank cell of a CSV table) is None
        value = config.get(key)
        return None if value is None or (isinstance(value, float) and value != value) else value

    weights = get("weights")
    weights = "none" if weights is None else (str(weights) if str(weights) in ("imagenet", "hed", "none")
                                              else Path(str(weights)).name)
    parts = [get("backbone"), weights, get("feature_layer") or "full",
             f"{int(get('image_size'))} px" if get("image_size") is not None else None, get("strategy")]
    fold = get("fold")
    folded = config.get("folds") if "folds" in config else True  # a run's config says; a comparison row does not
    if folded and fold is not None:  # a grid's pooled rows say "5 pooled"
        parts.append(f"fold {int(fold)}" if str(fold).lstrip("-").isdigit() or isinstance(fold, float)
                     else f"folds {fold}")
    return " · ".join(str(p) for p in parts if p is not None and p == p)


def new_axes(ax, figsize=(5, 3.5)):
    """``ax``, or the axes of a new constrained-layout figure of ``figsize``."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def save_figure(fig, path, *, dpi=110) -> Path:
    """Save a figure atomically (temporary name, then rename) and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
