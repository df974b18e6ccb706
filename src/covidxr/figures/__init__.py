"""Figures: exploratory data analysis, preprocessing, training curves, evaluation and Grad-CAM.
Must not compute results: with :mod:`covidxr.reports` these are the only modules that draw
(Matplotlib), and they import nothing above the evaluation layer. Every function draws on a
Matplotlib ``Axes`` (or makes a ``Figure``) and returns it, so the notebooks show them inline
and the command line saves them; none of them calls ``plt.show``.
"""

from .common import CATEGORY_COLOURS, DATASET_ATTRIBUTION, LEVEL_COLOURS, class_colour, new_axes, run_label, save_figure
from .eda import (eda_figure, plot_age_by_sex, plot_class_counts, plot_images_per_patient, plot_review_pair,
                  plot_sample_grid, plot_sex_distribution, plot_sources, plot_views_modalities, write_eda_figures,
                  write_review_figures)
from .evaluation import (DEFAULT_COMPARISON_METRICS, plot_calibration, plot_comparison, plot_confusion_matrix,
                         plot_confusion_summary, plot_precision_recall, plot_roc, plot_training_curves,
                         write_evaluation_figures)
from .gradcam import GRADCAM_PANEL_PIXELS, overlay, plot_gradcam_examples, plot_gradcam_panel, plot_lung_mass
from .preprocessing import plot_augmentations, plot_contrast, plot_epoch_balance, plot_preprocessing

__all__ = [
    "CATEGORY_COLOURS", "DATASET_ATTRIBUTION", "DEFAULT_COMPARISON_METRICS", "LEVEL_COLOURS", "class_colour",
    "GRADCAM_PANEL_PIXELS", "eda_figure", "new_axes", "overlay", "plot_gradcam_panel", "run_label",
    "plot_age_by_sex", "plot_augmentations", "plot_calibration", "plot_class_counts", "plot_comparison",
    "plot_confusion_matrix", "plot_confusion_summary", "plot_contrast", "plot_epoch_balance", "plot_gradcam_examples",
    "plot_images_per_patient", "plot_lung_mass", "plot_precision_recall", "plot_preprocessing", "plot_review_pair",
    "plot_roc", "plot_sample_grid",
    "plot_sex_distribution", "plot_sources", "plot_training_curves", "plot_views_modalities", "save_figure",
    "write_eda_figures", "write_evaluation_figures", "write_review_figures",
]
