"""Recalibration of a two-class model at a new site from a few labelled images: temperature scaling,
Platt scaling or isotonic regression of the positive class's probability (SciPy, scikit-learn), the rule that chooses
among them, the site's threshold, drawing the labelled images by group, and how the gain depends
on their number.
Must not read or write files: arrays and frames in, JSON-ready dicts out (a calibration is a
small dict of parameters that :func:`apply_calibration` turns into probabilities again).

Maps (``p`` = the model's probability of the positive class, ``z = logit(p)``):

* ``temperature``: ``sigmoid(z / T)``, one parameter fitted by log loss; keeps the order of the
  probabilities (ROC AUC unchanged) and the 0.5 point.
* ``platt``: ``sigmoid(a z + b)``, fitted by log loss with ``a = exp(u) > 0`` (SciPy's Nelder-Mead,
  ``a`` in [e^-7, e^5], ``b`` in [-20, 20]): it never reverses the order, so ROC AUC is unchanged
  too (a site where the model ranks backwards gets a flat map, not a reversed one).
* ``isotonic``: a non-decreasing step map (scikit-learn's ``IsotonicRegression``); ties images
  the model told apart, so ROC AUC may drop a little.

**Choice rule** (:data:`CHOICE_RULE`, ``method="auto"``): the map with the lowest
group-cross-validated log loss on the labelled images (up to 5 group folds, probabilities clipped
to [1e-3, 1 - 1e-3]; ties go to the simpler map: temperature, then Platt, then isotonic). With
fewer than :data:`MIN_FOR_CHOICE` labelled images isotonic regression (a step per few images) is
not a candidate. Temperature scaling keeps 0.5 where it is, so it cannot follow a change of
prevalence (a model trained with class weights at a site with other class shares); Platt scaling's
intercept can: the cross-validation tells which of the two the site needs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import GroupKFold

from . import metrics as M

__all__ = ["CALIBRATION_METHODS", "CHOICE_RULE", "MIN_FOR_CHOICE", "apply_calibration", "choose_method",
           "draw_labelled", "fit_calibration", "gain_by_size", "site_threshold"]

#: Recalibration maps; ``auto`` applies :data:`CHOICE_RULE`.
CALIBRATION_METHODS = ("auto", "temperature", "platt", "isotonic")
#: Labelled images from which ``auto`` compares the maps by group cross-validation.
MIN_FOR_CHOICE = 30
CHOICE_RULE = ("the map with the lowest group-cross-validated log loss on the labelled images: temperature or Platt, "
               f"and from {MIN_FOR_CHOICE} labelled images also isotonic")
_EPS = 1e-6
_CLIP = 1e-3


def _z(p) -> np.ndarray:
    return logit(np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS))


def _check_two_classes(y, what="labelled images") -> np.ndarray:
    y = np.asarray(y, dtype=int)
    counts = {int(k): int(v) for k, v in zip(*np.unique(y, return_counts=True))}
    if len(counts) < 2:
        raise ValueError(f"Expected {what} of both classes to fit a recalibration and a threshold. "
                         f"Received: class_counts={counts}")
    return y


def _fit_one(method: str, y, p) -> dict:
    """Parameters of one map fitted on labels ``y`` (0/1) and probabilities ``p``."""
    z = _z(p)
    if method == "temperature":
        def loss(log_t):
            q = np.clip(expit(z / np.exp(log_t)), _EPS, 1 - _EPS)
            return -float(np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
        found = minimize_scalar(loss, bounds=(-5.0, 5.0), method="bounded")
        return {"method": "temperature", "temperature": float(np.exp(found.x))}
    if method == "platt":
        def loss(ub):
            q = np.clip(expit(np.exp(ub[0]) * z + ub[1]), _EPS, 1 - _EPS)
            return -float(np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
        found = minimize(loss, x0=np.zeros(2), method="Nelder-Mead", bounds=[(-7.0, 5.0), (-20.0, 20.0)],
                         options={"xatol": 1e-6, "fatol": 1e-9})
        return {"method": "platt", "a": float(np.exp(found.x[0])), "b": float(found.x[1])}
    if method == "isotonic":
        fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(np.asarray(p, float), y)
        return {"method": "isotonic", "x": [float(v) for v in fitted.X_thresholds_],
                "y": [float(v) for v in fitted.y_thresholds_]}
    raise ValueError(f"Unknown recalibration method. Expected one of {list(CALIBRATION_METHODS)}. "
                     f"Received: method={method!r}")


def apply_calibration(params: dict, p) -> np.ndarray:
    """The recalibrated positive-class probabilities.

    Args:
        params: A fitted map (:func:`fit_calibration`'s ``params``), as read back from JSON too.
        p: Positive-class probabilities, shape (n,).

    Returns:
        Shape (n,), in [0, 1].
    """
    method = params.get("method")
    if method == "temperature":
        return expit(_z(p) / float(params["temperature"]))
    if method == "platt":
        return expit(float(params["a"]) * _z(p) + float(params["b"]))
    if method == "isotonic":
        return np.interp(np.asarray(p, dtype=float), params["x"], params["y"])
    raise ValueError(f"Unknown recalibration method. Expected one of {list(CALIBRATION_METHODS[1:])}. "
                     f"Received: method={method!r}")


def _cv_log_loss(method: str, y, p, groups) -> float:
    folds = min(5, len(np.unique(groups)))
    losses = []
    for train, test in GroupKFold(n_splits=folds).split(p, y, groups):
        if np.unique(y[train]).size < 2:
            continue
        q = np.clip(apply_calibration(_fit_one(method, y[train], p[train]), p[test]), _CLIP, 1 - _CLIP)
        losses.append(-(y[test] * np.log(q) + (1 - y[test]) * np.log(1 - q)))
    return float(np.concatenate(losses).mean()) if losses else float("inf")


def choose_method(y, p, groups) -> tuple[str, dict]:
    """The map :data:`CHOICE_RULE` picks for these labelled images, and each candidate's CV log loss."""
    candidates = CALIBRATION_METHODS[1:] if len(y) >= MIN_FOR_CHOICE else CALIBRATION_METHODS[1:3]
    losses = {m: _cv_log_loss(m, y, p, groups) for m in candidates}
    return min(losses, key=lambda m: (round(losses[m], 6), CALIBRATION_METHODS.index(m))), losses


def fit_calibration(y, p, groups, *, method="auto") -> dict:
    """Fit a recalibration of the positive class's probability on labelled images.

    Args:
        y: 0/1 labels (1 = positive class), shape (n,).
        p: The model's positive-class probabilities, shape (n,).
        groups: Each image's group (patient), shape (n,): the folds of the ``auto`` choice.
        method: One of :data:`CALIBRATION_METHODS`.

    Returns:
        ``{"params", "method", "chosen_by", "cv_log_loss"}``; ``params`` feeds :func:`apply_calibration`.

    Raises:
        ValueError: Unknown method, or labels of one class only.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"Unknown recalibration method. Expected one of {list(CALIBRATION_METHODS)}. "
                         f"Received: method={method!r}")
    y = _check_two_classes(y)
    p = np.asarray(p, dtype=float)
    losses = {}
    if method == "auto":
        method, losses = choose_method(y, p, np.asarray(groups).astype(str))
        chosen_by = CHOICE_RULE
    else:
        chosen_by = "given by the user"
    return {"params": _fit_one(method, y, p), "method": method, "chosen_by": chosen_by, "cv_log_loss": losses}


def site_threshold(y, p, *, method="youden", target_sensitivity=None) -> dict:
    """The site's threshold on its labelled images' (recalibrated) probabilities, by the one
    threshold rule (:func:`covidxr.evaluation.choose_threshold`)."""
    info = M.choose_threshold(_check_two_classes(y), p, method=method, target_sensitivity=target_sensitivity)
    info["description"] = info["description"].replace("validation part", "site's labelled images")
    return info


def draw_labelled(frame: pd.DataFrame, labelled, *, group_col: str, seed=0) -> np.ndarray:
    """Which rows of a site are labelled: whole groups drawn at random until ``labelled`` images.

    One group of each class is drawn first (so both classes are labelled), then groups in random
    order until at least ``labelled`` images; a group is never split between the labelled images
    and the rest.

    Args:
        frame: The site's rows: ``label`` and ``group_col``, shape (n, ...).
        labelled: A number of images (int >= 2) or a share of them (float in (0, 1)).
        group_col: The column of the groups.
        seed: Seed of the draw.

    Returns:
        Bool mask of shape (n,).

    Raises:
        ValueError: A site of one class, a bad ``labelled``, or one that leaves no image to score.
    """
    n = len(frame)
    labels = frame["label"].astype(str).to_numpy()
    counts = {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))}
    if len(counts) < 2:
        raise ValueError(f"Expected a site with images of both classes to recalibrate on. Received: class_counts={counts}")
    k = _labelled_count(labelled, n)
    groups = frame[group_col].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(np.unique(groups)))
    first = []
    for c in sorted(counts):
        have = set(groups[labels == c])
        first.append(next(g for g in order if g in have and g not in first))
    order = first + [g for g in order if g not in first]
    chosen, taken = set(), 0
    sizes = pd.Series(groups).value_counts()
    for g in order:
        if taken >= k:
            break
        chosen.add(g)
        taken += int(sizes[g])
    mask = np.isin(groups, list(chosen))
    if mask.all():
        raise ValueError(f"Expected labelled images to leave some of the site's {n} images (whole groups) to score. "
                         f"Received: labelled={labelled!r}")
    return mask


def _labelled_count(labelled, n: int) -> int:
    try:
        value = float(labelled)
    except (TypeError, ValueError):
        value = float("nan")
    if 0 < value < 1:
        return max(2, int(round(value * n)))
    if not np.isfinite(value) or value != int(value) or value < 2:
        raise ValueError(f"Expected --labelled as a number of images (an integer >= 2) or a share in (0, 1). "
                         f"Received: labelled={labelled!r}")
    if value >= n:
        raise ValueError(f"Expected fewer labelled images than the site's {n} images (the rest are scored). "
                         f"Received: labelled={labelled!r}")
    return int(value)


def gain_by_size(frame: pd.DataFrame, *, classes, sizes, home_threshold, group_col, repeats=20, seed=0,
                 method="auto", threshold_method="youden", target_sensitivity=None) -> pd.DataFrame:
    """How recalibration on ``k`` labelled images changes the rest of a site, for each ``k``.

    For each size and each of ``repeats`` draws (:func:`draw_labelled`), fit a map and a threshold on the
    labelled images and score the rest before (home probabilities and threshold) and after.

    Returns:
        One row per (size, repeat): ``labelled`` (the requested size), ``n_labelled``, ``n_rest``,
        ``method`` and ``<metric>_before`` / ``<metric>_after`` for ``ece, brier, sensitivity,
        specificity, roc_auc``. Sizes that leave nothing to score are left out.
    """
    y_all, probs = M.class_probabilities(frame, classes)
    p_all = probs[:, 1]
    rows = []
    for size in sizes:
        if size >= len(frame):
            continue
        for r in range(repeats):
            mask = draw_labelled(frame, size, group_col=group_col, seed=seed + r)
            fitted = fit_calibration(y_all[mask], p_all[mask], frame[group_col].to_numpy()[mask], method=method)
            q_all = apply_calibration(fitted["params"], p_all)
            cut = site_threshold(y_all[mask], q_all[mask], method=threshold_method,
                                 target_sensitivity=target_sensitivity)["threshold"]
            before = M.binary_metrics(y_all[~mask], p_all[~mask], threshold=home_threshold)
            after = M.binary_metrics(y_all[~mask], q_all[~mask], threshold=cut)
            row = {"labelled": int(size), "repeat": r, "n_labelled": int(mask.sum()), "n_rest": int((~mask).sum()),
                   "method": fitted["method"]}
            for name in ("ece", "brier", "sensitivity", "specificity", "roc_auc"):
                row[f"{name}_before"], row[f"{name}_after"] = before[name], after[name]
            rows.append(row)
    return pd.DataFrame(rows)
