"""What every figure shares: the dataset attribution, class colours, new axes, atomic saving.
Must not compute results: the figures modules draw what the lower layers return.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ..atomic import atomic_path

__all__ = ["CATEGORY_COLOURS", "DATASET_ATTRIBUTION", "new_axes", "save_figure"]

#: Attribution printed under every figure that shows images from the collection.
DATASET_ATTRIBUTION = (
    "Images: COVID-19 Image Data Collection (Cohen et al., arXiv:2006.11988); "
    "each image under its own licence (see metadata.csv)."
)

CATEGORY_COLOURS = {"covid": "#c0392b", "normal": "#2e86c1", "other": "#7d8c8d", "non-covid": "#2e86c1"}


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
