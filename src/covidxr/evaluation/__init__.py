"""Evaluation: metrics with group-bootstrap and Wilson intervals, the validation threshold, scoring a run
or another dataset, comparing runs (also paired), pooling a grid's folds, choosing Grad-CAM examples,
the Grad-CAM mass inside lung masks.
Must not write files or draw: every function returns data (dicts, frames, arrays); the
application layer writes them and the figures and reports layers present them.

Importing it does not import Keras (so ``covidxr eda`` and the figures start fast): the Grad-CAM
examples (:mod:`covidxr.evaluation.examples`) are loaded on first use, and scoring another
dataset or measuring Grad-CAM mass inside the lungs loads the model then.
"""

from . import bootstrap, metrics, resampled
from .bootstrap import BootstrapWarning, bootstrap_metrics, metrics_table, patient_bootstrap, resampled_bootstrap
from .intervals import PROPORTION_METRICS, clopper_pearson, design_effect, proportion_intervals, wilson_interval
from .metrics import (BINARY_METRICS, ECE_BINS, MULTICLASS_METRICS, PER_CLASS_METRICS, THRESHOLD_METHODS,
                      binary_metrics, choose_threshold, class_probabilities, classes_from_frame, compute_metrics,
                      decide, expected_calibration_error, multiclass_metrics, part_metrics, patient_frame, positive,
                      prob_columns)
from .lungs import find_lung_masks, lung_mass, lung_mass_summary, mass_shares, match_masks, prepare_mask
from .paired import PAIRED_METRICS, P_VALUE_RULE, paired_bootstrap, paired_difference, paired_predictions
from .overlap import OVERLAP_KINDS, flag_overlap, overlap_summary, run_reference
from .pooling import SELECTION_RULE, grid_comparison, grid_selection, pooled_metrics
from .runs import LEVELS, RUN_KEYS, held_out_test, read_run, validation_threshold
from .scoring import (compare_runs, evaluate_predictions, external_predictions, latest_evaluation, run_thresholds,
                      score_run, unreadable_images, with_decisions)

__all__ = [
    "BootstrapWarning", "bootstrap", "bootstrap_metrics", "metrics_table", "patient_bootstrap",
    "resampled", "resampled_bootstrap",
    "PROPORTION_METRICS", "clopper_pearson", "design_effect", "proportion_intervals", "wilson_interval",
    "BINARY_METRICS", "ECE_BINS", "MULTICLASS_METRICS", "PER_CLASS_METRICS", "THRESHOLD_METHODS", "binary_metrics",
    "choose_threshold", "class_probabilities", "classes_from_frame", "compute_metrics", "decide",
    "expected_calibration_error", "multiclass_metrics", "part_metrics", "patient_frame", "positive", "prob_columns",
    "GRADCAM_CATEGORIES", "LEVELS", "RUN_KEYS", "SELECTION_RULE", "compare_runs", "evaluate_predictions",
    "external_predictions", "grid_comparison", "grid_selection", "held_out_test", "latest_evaluation", "metrics",
    "pooled_metrics", "read_run", "run_thresholds", "score_run", "select_gradcam_examples", "unreadable_images",
    "validation_threshold", "with_decisions",
    "OVERLAP_KINDS", "flag_overlap", "overlap_summary", "run_reference",
    "find_lung_masks", "lung_mass", "lung_mass_summary", "mass_shares", "match_masks", "prepare_mask",
    "PAIRED_METRICS", "P_VALUE_RULE", "paired_bootstrap", "paired_difference", "paired_predictions",
]


def __getattr__(name):
    """``GRADCAM_CATEGORIES`` and ``select_gradcam_examples``, from :mod:`.examples` on first use."""
    if name in ("GRADCAM_CATEGORIES", "select_gradcam_examples"):
        from . import examples

        return getattr(examples, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
