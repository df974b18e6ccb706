"""Phase 1 as a convex fit: an L2-regularised logistic regression (softmax for three classes or
more) on the standardised raw pooled features, its strength chosen by cross-validation by split
group inside the training part, run to convergence and written into the model's Dense head.
Must not read data or make run folders: it fits a built model's head on features it is given.

Why not gradient descent on the head: a few epochs of Adam stop before the head has fitted, at
the epoch a small validation part (14 negatives in the 2020 snapshot's seed-0 split) happens to
like best. The logistic regression has one optimum per C; C is chosen on the training part
alone (out-of-fold predictions over :class:`sklearn.model_selection.StratifiedGroupKFold`
folds, so a patient's images never sit on both sides), so the validation part is never used to
fit or to choose, and the fit is the same for the same seed.

The imbalance strategy becomes sample weights of the one fit: ``class-weight`` the balanced
class weights; ``oversample``/``undersample`` the number of times each image appears in one
resampled epoch (:func:`covidxr.sampling.resample_indices`, seeded); ``none`` ones.

The coefficients and intercepts go into the ``head`` Dense layer and the standardisation stays
:class:`~covidxr.models.FeatureNorm` (adapted to the training features first), so the model is
still one Keras model: predict, Grad-CAM, fine-tuning, resume and the feature store are unchanged.

When phase 2 will fine-tune through the model's augmentation, the caller asks for
``augmented_copies``: the head is then fitted (and the standardisation adapted) on the training
images' features **and** those of that many augmented copies of each image, drawn by a fresh copy
of the model's own augmentation layers (same layers and seed: the same copies for the same seed;
the model's random state is untouched). A copy keeps its image's label, weight and group, so the
cross-validation folds never split an image from its copies. The copies' features are computed
for the run and never stored (the feature store keeps the un-augmented ones only).
"""

from __future__ import annotations

import time
import warnings

import keras
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from threadpoolctl import threadpool_limits

from ..models import LAYER_NAMES, backbone_layer, head_model
from . import frozen
from ..sampling import class_weights, resample_indices
from .batches import predict_batches
from .callbacks import exact_scores, validation_logs
from .phases import check_fit, phase1_features, adapt_feature_norm, compile_model

__all__ = ["AUGMENTED_COPIES", "C_GRID", "CV_FOLDS", "MAX_ITER", "fit_linear", "fit_linear_head", "augmented_images",
           "oof_probabilities", "sample_weights"]

#: The inverse regularisation strengths cross-validation chooses from (scikit-learn's ``C``;
#: the loss is summed over the sample-weighted training images).
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))
#: Group folds of the cross-validation inside the training part (fewer when a class has fewer groups).
CV_FOLDS = 5
#: L-BFGS iterations allowed; a fit that needs more is reported as not converged.
MAX_ITER = 5000
#: L-BFGS gradient tolerance.
TOL = 1e-6
#: Augmented copies of each training image the head is fitted on when phase 2 will train through
#: augmentation (``covidxr.train`` passes it as ``augmented_copies``; 0 otherwise).
AUGMENTED_COPIES = 4


def sample_weights(labels, *, strategy, num_classes, seed=0) -> np.ndarray:
    """The imbalance strategy as one weight per training image (n,) float64 (see the module)."""
    labels = np.asarray(labels, dtype=np.int64)
    if strategy == "class-weight":
        weights = class_weights(labels, num_classes=num_classes)
        return np.array([weights[int(c)] for c in labels], dtype=np.float64)
    indices = resample_indices(labels, strategy=strategy, rng=np.random.default_rng(int(seed)))
    return np.bincount(indices, minlength=len(labels)).astype(np.float64)


def _fit(x, y, w, c):
    """One weighted fit; ``(model, converged)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(C=float(c), solver="lbfgs", max_iter=MAX_ITER, tol=TOL).fit(x, y, sample_weight=w)
    return model, not any(issubclass(item.category, ConvergenceWarning) for item in caught)


def _folds(y, groups, *, seed):
    """``(train, test)`` index pairs of stratified group folds, or None when a class has fewer than
    two groups (no cross-validation possible)."""
    per_class = min(len(set(groups[y == c])) for c in np.unique(y))
    k = min(CV_FOLDS, per_class)
    if k < 2:
        return None
    return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed)).split(y, y, groups))


def _proba(model, x, num_classes) -> np.ndarray:
    """(n, 1) probability of class 1 for two classes, else (n, C) (classes absent from the fit: 0)."""
    probs = np.zeros((len(x), num_classes))
    probs[:, model.classes_] = model.predict_proba(x)
    return probs[:, 1:] if num_classes == 2 else probs


def oof_probabilities(x, y, w, folds, grid, *, num_classes) -> list[np.ndarray]:
    """Out-of-fold probabilities of the logistic regression for each strength of ``grid``
    (ascending; each fit starts from the previous C's solution of the same fold): every image is
    predicted by the fit on the other folds. A list of (n, 1) or (n, C) arrays, one per C."""
    out = [np.zeros((len(y), 1 if num_classes == 2 else num_classes)) for _ in grid]
    for train, test in folds:
        model = LogisticRegression(solver="lbfgs", max_iter=MAX_ITER, tol=TOL, warm_start=True)
        for probs, c in zip(out, grid):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.set_params(C=float(c)).fit(x[train], y[train], sample_weight=w[train])
            probs[test] = _proba(model, x[test], num_classes)
    return out


def fit_linear(x, y, *, groups, weights=None, num_classes=2, seed=0, c_grid=C_GRID):
    """Choose C by out-of-fold ROC AUC over group folds, then fit on all of ``x``.

    Args:
        x: Standardised features (n, F). y: int class indices (n,).
        groups: Split group of each row (n,): a group's rows are never on both sides of a fold.
        weights: Sample weights (n,) (None: ones).
        num_classes: Number of classes (2: one logistic unit; more: multinomial softmax).
        seed: Seed of the fold assignment (the fit itself is deterministic).
        c_grid: The C values to choose from; the smallest C reaching the best out-of-fold AUC wins
            (one value: that C, no cross-validation; no folds possible: C = 1). When no C beats
            chance out of fold (best AUC ≤ 0.5), the smallest C, with a warning: a head fitted
            hard to features without signal only memorises the training part.

    Returns:
        ``(coef (F, k), intercept (k,), info)``, k = 1 for two classes else ``num_classes``;
        info: ``C``, ``cv_auc`` (out-of-fold ROC AUC per C, None without CV), ``cv_folds``,
        ``iterations``, ``converged``, ``max_iter``, ``seconds``.

    Raises:
        ValueError: Fewer than two classes in ``y``, or rows that do not match.
    """
    start = time.perf_counter()
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)
    groups = np.asarray(groups)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    if x.ndim != 2 or not len(y) == len(x) == len(groups) == len(w):
        raise ValueError(f"Expected features (n, F) with n labels, groups and weights. Received: "
                         f"shapes={x.shape}, {y.shape}, {groups.shape}, {w.shape}")
    if np.unique(y[w > 0]).size < 2:
        raise ValueError(f"Expected at least two classes among the training labels. Received: "
                         f"classes={np.unique(y).tolist()}")
    folds = _folds(y, groups, seed=seed)
    grid = sorted(float(c) for c in c_grid)
    scores = None
    chosen = grid[0] if len(grid) == 1 else (1.0 if folds is None else None)
    if chosen is None:
        with threadpool_limits(limits=1, user_api="blas"):  # small products: threads only contend
            scores = [exact_scores(y, probs)["auc"] for probs in oof_probabilities(x, y, w, folds, grid,
                                                                                  num_classes=num_classes)]
        finite = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
        chosen = grid[int(np.flatnonzero(finite >= finite.max() - 1e-12)[0])]
        if finite.max() <= 0.5:  # no C ranks better than chance out of fold: the strongest regularisation
            chosen = grid[0]
            warnings.warn(f"No C of the head ranks the training part's held-out folds better than chance (best "
                          f"out-of-fold ROC AUC {finite.max():.3f}): the features carry no signal the head can "
                          f"show, so the strongest regularisation, C={chosen:g}, is used.", stacklevel=2)
    with threadpool_limits(limits=1, user_api="blas"):
        model, converged = _fit(x, y, w, chosen)
    coef = model.coef_.T if num_classes == 2 else np.zeros((x.shape[1], num_classes))
    intercept = model.intercept_ if num_classes == 2 else np.zeros(num_classes)
    if num_classes > 2:  # classes absent from the fit keep a very low logit
        coef[:, model.classes_] = model.coef_.T
        intercept[:] = -1e4
        intercept[model.classes_] = model.intercept_
    info = {"C": chosen, "cv_auc": None if scores is None else {f"{c:g}": s for c, s in zip(grid, scores)},
            "cv_folds": 0 if folds is None else len(folds), "iterations": int(np.max(model.n_iter_)),
            "converged": bool(converged), "max_iter": MAX_ITER, "seconds": round(time.perf_counter() - start, 3)}
    return coef.astype(np.float32), intercept.astype(np.float32), info


def augmented_images(model, images, *, copies, batch_size) -> np.ndarray:
    """``copies`` augmented copies of uint8 ``images`` (n, S, S, 1), copy after copy ((copies * n, S,
    S, 1) uint8), drawn by a fresh copy of ``model``'s augmentation layers (same seed: the same copies
    every time); none when the model has no augmentation layers."""
    names = [layer.name for layer in model.layers]
    if LAYER_NAMES["augmentation"] not in names or not model.get_layer(LAYER_NAMES["augmentation"]).layers:
        return np.zeros((0, *np.shape(images)[1:]), np.uint8)
    augment = keras.Sequential.from_config(model.get_layer(LAYER_NAMES["augmentation"]).get_config())
    images, step = np.asarray(images), int(batch_size)
    out = [keras.ops.convert_to_numpy(augment(images[i:i + step].astype(np.float32), training=True))
           for _ in range(int(copies)) for i in range(0, len(images), step)]
    return np.clip(np.round(np.concatenate(out)), 0, 255).astype(np.uint8) if out else images[:0]


def _set_head(model, coef, intercept) -> None:
    """Write ``coef`` (F, k) and ``intercept`` (k,) into the model's Dense head."""
    head = model.get_layer(LAYER_NAMES["head"])
    head.kernel.assign(coef.astype(head.kernel.dtype))
    head.bias.assign(intercept.astype(head.bias.dtype))


def _training_logs(head, features, labels, weights, *, batch_size) -> dict:
    """``loss`` (Keras' weighted mean cross-entropy), ``auc`` and ``pr_auc`` of the fitted head on
    its training features: the figures a gradient-descent epoch would log."""
    probs = predict_batches(head, features, batch_size=batch_size)
    scores = exact_scores(labels, probs)
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[1] == 1:
        q = np.clip(np.where(labels == 1, p[:, 0], 1 - p[:, 0]), 1e-7, 1 - 1e-7)
    else:
        q = np.clip(p[np.arange(len(labels)), labels], 1e-7, 1 - 1e-7)
    return {"loss": float(np.sum(weights * -np.log(q)) / np.sum(weights)), "auc": scores["auc"],
            "pr_auc": scores["pr_auc"]}


def fit_linear_head(model, train_images, train_labels, val_images, val_labels, *, groups, num_classes,
                    batch_size=32, strategy="none", seed=0, features=None, learning_rate=1e-3, callbacks=(),
                    initial_epoch=0, jit_compile="auto", c_grid=C_GRID, augmented_copies=0, **_):
    """Phase 1 as one convex fit: adapt the standardisation, choose C by group CV on the training
    part, fit to convergence and write the head; one history "epoch".

    Args:
        model: A :func:`covidxr.models.build_model` model (its head set in place).
        train_images, train_labels, val_images, val_labels: As
            :func:`~covidxr.training.phases.fit_head` (images are used only when ``features`` is None).
        groups: Split group of each training image (n,) (the cross-validation's groups).
        num_classes, batch_size, strategy, seed: As ``fit_head``.
        features: ``(train, val)`` raw pooled features, or None (computed here).
        learning_rate: Only the learning rate of the (unused) optimizer the checkpoint records.
        callbacks: The run's callbacks (early stopping, best model, checkpoint ...): they see one
            epoch whose ``logs`` hold the training and exact validation figures.
        initial_epoch: 1 when a resumed run had committed the fitted head: nothing is refitted.
        c_grid: The C values cross-validation chooses from (:func:`fit_linear`).
        augmented_copies: Also fit on this many augmented copies of each training image
            (:func:`augmented_images`; each with its image's label, weight and group); 0: the
            training images' features alone. The logged training loss is the fit's, over all its rows.

    Returns:
        ``(None, info)``: info as ``fit_head``'s plus ``head``: :func:`fit_linear`'s info (C,
        cross-validated AUC per C, iterations, convergence) and ``augmented_copies`` (0 without a
        model augmentation).
    """
    backbone_layer(model).trainable = False
    train_features, val_features, seconds = phase1_features(
        model, (train_images, train_labels), (val_images, val_labels), features=features, cache_features=True,
        num_classes=num_classes, batch_size=batch_size)
    info = {"feature_seconds": seconds, "feature_shape": list(train_features.shape)}
    head = head_model(model)
    compile_model(head, num_classes=num_classes, learning_rate=learning_rate, jit_compile=jit_compile)
    head.optimizer.build(head.trainable_variables)  # the checkpoint stores optimizer variables
    hooks = keras.callbacks.CallbackList(list(callbacks), model=head)
    labels = np.asarray(train_labels, dtype=np.int64)
    weights = sample_weights(labels, strategy=strategy, num_classes=num_classes, seed=seed)
    start = time.perf_counter()
    hooks.on_train_begin()
    if int(initial_epoch) < 1:
        hooks.on_epoch_begin(0)
        copies = augmented_images(model, train_images, copies=augmented_copies, batch_size=batch_size)
        fitted = np.concatenate([train_features, frozen.pooled_features(model, copies, batch_size=batch_size)]) \
            if len(copies) else train_features
        rows = np.tile(np.arange(len(labels)), len(fitted) // len(labels))  # a copy's image
        adapt_feature_norm(model, fitted)
        standardised = keras.ops.convert_to_numpy(model.get_layer(LAYER_NAMES["feature_norm"])(fitted))
        coef, intercept, info["head"] = fit_linear(standardised, labels[rows], groups=np.asarray(groups)[rows],
                                                   weights=weights[rows], num_classes=num_classes, seed=seed,
                                                   c_grid=c_grid)
        info["head"]["augmented_copies"] = len(fitted) // len(labels) - 1
        _set_head(model, coef, intercept)
        logs = _training_logs(head, fitted, labels[rows], weights[rows], batch_size=batch_size)
        logs.update(validation_logs(val_labels, predict_batches(head, val_features, batch_size=batch_size)))
        hooks.on_epoch_end(0, logs)
    hooks.on_train_end()
    info.update(fit_seconds=time.perf_counter() - start, validation_seconds=0.0,
                train_auc=check_fit(head, train_features, labels, batch_size=batch_size))
    return None, info
