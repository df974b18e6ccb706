"""Tests for covidxr.training.linear (phase 1 as a convex fit) and the fold-mean ROC AUC of
covidxr.evaluation.pooling."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from covidxr.evaluation.pooling import fold_mean_auc
from covidxr.models import build_model
from covidxr.training import SaveBest
from covidxr.training.linear import C_GRID, fit_linear, fit_linear_head, sample_weights

SIZE = 32
WIDTH = 512  # VGG16's pooled width


def _vgg(num_classes=2):
    keras.utils.set_random_seed(0)
    return build_model("vgg16", num_classes=num_classes, image_size=SIZE, weights=None, augmentation=None, seed=0)


def _problem(n, seed, classes=2):
    """Raw-VGG-like features (0..250) whose label follows 16 of them, plus noise; two images per group."""
    rng = np.random.default_rng(seed)
    x = (250 * rng.random((n, WIDTH))).astype(np.float32)
    score = x[:, :16].sum(axis=1) / 250 - 8 + rng.normal(0, 0.8, n)
    y = np.digitize(score, [0.9] if classes == 2 else [-0.6, 0.6]).astype(np.int64)
    return x, y, np.arange(n) // 2


def _head(model):
    head = model.get_layer("head")
    return [keras.ops.convert_to_numpy(v).copy() for v in (head.kernel, head.bias)]


def _fit(model, x, y, groups, xv, yv, **kwargs):
    blank = np.zeros((1, SIZE, SIZE, 1), np.uint8)
    return fit_linear_head(model, blank, y, blank, yv, groups=groups, num_classes=int(y.max()) + 1,
                           features=(x, xv), **kwargs)


def test_the_fit_is_deterministic_converged_and_blind_to_validation_labels():
    x, y, groups = _problem(120, seed=0)
    xv, yv, _ = _problem(30, seed=1)
    first, second = _vgg(), _vgg()
    saver = SaveBest(first)
    _, info = _fit(first, x, y, groups, xv, yv, strategy="class-weight", seed=3, callbacks=[saver])
    head = info["head"]
    assert head["converged"] and 0 < head["iterations"] < head["max_iter"] and head["C"] in C_GRID
    assert head["cv_folds"] == 5 and set(head["cv_auc"]) == {f"{c:g}" for c in C_GRID}
    assert info["train_auc"] > 0.9 and saver.best_epoch == 0 and saver.best_weights is not None
    # the same seed with only the validation labels changed: the very same head
    _fit(second, x, y, groups, xv, 1 - yv, strategy="class-weight", seed=3)
    for a, b in zip(_head(first), _head(second)):
        np.testing.assert_array_equal(a, b)
    # the head is the fitted logistic regression: the model's output is its probability
    probs = first.get_layer("head")(first.get_layer("feature_norm")(xv))
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(probs)))


def test_three_classes_fit_a_softmax_head():
    x, y, groups = _problem(150, seed=2, classes=3)
    model = _vgg(num_classes=3)
    _, info = _fit(model, x, y, groups, x[:30], y[:30], strategy="oversample")
    kernel, bias = _head(model)
    assert kernel.shape == (WIDTH, 3) and bias.shape == (3,) and info["head"]["converged"]
    assert info["train_auc"] > 0.8


def test_strategies_become_sample_weights():
    y = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(sample_weights(y, strategy="class-weight", num_classes=2),
                               [2, 2, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    over = sample_weights(y, strategy="oversample", num_classes=2, seed=1)
    assert over.sum() == 12 and over[:2].sum() == 6 and np.all(over[2:] == 1)
    under = sample_weights(y, strategy="undersample", num_classes=2, seed=1)
    assert under.sum() == 4 and np.all(under[:2] == 1)
    np.testing.assert_array_equal(sample_weights(y, strategy="none", num_classes=2), np.ones(8))


@pytest.mark.parametrize("y, groups, match", [
    (np.zeros(6, int), np.arange(6), r"Expected at least two classes.*Received: classes=\[0\]"),
    (np.arange(6) % 2, np.arange(5), r"Expected features \(n, F\) with n labels.*Received: shapes="),
])
def test_bad_inputs_are_refused(y, groups, match):
    with pytest.raises(ValueError, match=match):
        fit_linear(np.zeros((6, 4)), y, groups=groups)


def test_too_few_groups_fall_back_to_c_1_without_cross_validation():
    x, y, _ = _problem(40, seed=4)
    _, _, info = fit_linear(x / 250, y, groups=y)  # one group per class
    assert info["C"] == 1.0 and info["cv_folds"] == 0 and info["cv_auc"] is None and info["converged"]


def test_no_c_above_chance_out_of_fold_takes_the_strongest_regularisation(monkeypatch):
    import covidxr.training.linear as linear

    x, y, groups = _problem(60, seed=5)

    def worse_than_chance(x, y, w, folds, grid, *, num_classes):  # below 0.5 for every C, rising with C
        noise = np.random.default_rng(0).normal(0, 0.5, len(y))
        for i in range(len(grid)):
            score = noise - (1 - 0.7 * i / (len(grid) - 1)) * y
            yield (1 / (1 + np.exp(-score)))[:, None]   # (n, 1): the positive class

    monkeypatch.setattr(linear, "oof_probabilities", worse_than_chance)
    with pytest.warns(UserWarning, match=r"better than chance \(best out-of-fold ROC AUC 0\.\d+\).*C=0\.0001"):
        _, _, info = fit_linear(x / 250, y, groups=groups)
    assert info["C"] == min(C_GRID) and max(info["cv_auc"].values()) < 0.5
    assert info["cv_auc"][f"{max(C_GRID):g}"] == max(info["cv_auc"].values())  # the old rule took C=100


def test_fold_mean_auc_leaves_out_the_folds_differences():
    """Two folds, each perfectly ranked, but one fold's scores all above the other's: the pooled
    AUC falls, the per-fold mean stays 1."""
    y = np.array([0, 1] * 10 + [0, 1] * 10)
    s = np.array([0.1, 0.2] * 10 + [0.8, 0.9] * 10)
    folds = np.repeat(["a", "b"], 20)
    result = fold_mean_auc(y, s, folds, np.arange(40), n_bootstrap=50)
    assert result["value"] == 1.0 and result["per_fold"] == {"a": 1.0, "b": 1.0}
    assert result["ci_low"] == result["ci_high"] == 1.0
    with pytest.raises(ValueError, match=r"Expected labels, scores, folds and groups of one length.*Received: lengths"):
        fold_mean_auc(y, s[:-1], folds, np.arange(40))


# --------------------------------------------------------------------------- phase 2 starts where phase 1 ended

def _tiny_images(n=32):
    """Grey noise; class 1 has a bright square."""
    rng = np.random.default_rng(0)
    x = rng.integers(40, 120, (n, SIZE, SIZE, 1), dtype=np.uint8)
    y = np.arange(n) % 2
    x[y == 1, 8:16, 8:16, 0] = 250
    return x, y


def test_calibrated_batchnorm_gives_the_same_features_in_both_modes():
    from covidxr.models import feature_model
    from covidxr.training import calibrate_batchnorm

    x, _ = _tiny_images(16)
    keras.utils.set_random_seed(0)
    model = build_model("resnet50", num_classes=2, image_size=SIZE, weights=None, augmentation=None, seed=0)
    features = feature_model(model)

    def gap():
        train, infer = (keras.ops.convert_to_numpy(features(x, training=mode)) for mode in (True, False))
        return float(np.abs(train - infer).mean() / np.abs(train).mean())

    before = gap()
    assert calibrate_batchnorm(model, x, batch_size=16) == 53  # ResNet50's BatchNormalization layers
    assert before > 0.5 and gap() < 0.05, (before, gap())


@pytest.mark.parametrize("backbone, weights, feature_layer, c, floor", [("resnet50", None, None, 1e-4, 0.2),
                                                                        ("vgg16", "hed", "block4_conv3", 1e-2, 0.01)])
def test_the_first_fine_tuning_epoch_keeps_what_phase1_learned(backbone, weights, feature_layer, c, floor):
    """Phase 1 fitted on the images and their augmented copies (as ``covidxr.train`` does before
    fine-tuning through augmentation). For HED at C = 0.01 (a sharp head, as cross-validation chose
    in a real fold) a head fitted on the clean images alone jumped 0.035 -> 0.215 (6x)."""
    from covidxr.training import calibrate_batchnorm, fine_tune
    from covidxr.training.linear import AUGMENTED_COPIES

    x, y = _tiny_images()
    keras.utils.set_random_seed(0)
    model = build_model(backbone, num_classes=2, image_size=SIZE, weights=weights, feature_layer=feature_layer,
                        augmentation=True, seed=0)
    random = weights is None
    if random:
        calibrate_batchnorm(model, x, batch_size=16)
    losses = []

    class Losses(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            losses.append(logs["loss"])

    _, info = fit_linear_head(model, x, y, x[:8], y[:8], groups=np.arange(len(y)) // 2, num_classes=2,
                              batch_size=16, strategy="class-weight", callbacks=[Losses()], c_grid=(c,),
                              jit_compile=False, augmented_copies=AUGMENTED_COPIES)
    fine_tune(model, x, y, x[:8], y[:8], num_classes=2, epochs=1, batch_size=16, strategy="class-weight",
              callbacks=[Losses()], verbose=0, train_batchnorm=random, jit_compile=False)  # the default rate, 1e-5
    # (32 images and 512+ features separate at large C; the floor keeps the phase-1 loss away from 0)
    assert len(losses) == 2 and floor < losses[0] and losses[1] <= 2 * losses[0], losses
    assert info["head"]["augmented_copies"] == AUGMENTED_COPIES


def test_copies_are_seeded_and_a_run_without_them_fits_the_unaugmented_features(monkeypatch):
    """Augmented copies: the same for the same seed, each a changed image; without copies (a run
    that does not fine-tune) the fit sees exactly the standardised features of the images, one row
    each, with their own groups."""
    from covidxr.training import linear
    from covidxr.training.frozen import pooled_features
    from covidxr.training.linear import augmented_images

    x, y = _tiny_images(8)
    keras.utils.set_random_seed(0)
    model = build_model("vgg16", num_classes=2, image_size=SIZE, weights=None, augmentation=True, seed=0)
    copies = augmented_images(model, x, copies=2, batch_size=4)
    assert copies.shape == (16, SIZE, SIZE, 1) and copies.dtype == np.uint8
    np.testing.assert_array_equal(copies, augmented_images(model, x, copies=2, batch_size=4))
    assert np.abs(copies[:8].astype(int) - x).mean() > 5 and np.abs(copies[:8].astype(int) - copies[8:]).mean() > 5
    seen = []
    fit = linear.fit_linear
    monkeypatch.setattr(linear, "fit_linear",
                        lambda x_, y_, **kw: seen.append((x_, y_, kw["groups"])) or fit(x_, y_, **kw))
    groups, norm, expected = np.arange(8) // 2, model.get_layer("feature_norm"), []
    for n in (0, 2):
        _, info = fit_linear_head(model, x, y, x, y, groups=groups, num_classes=2, batch_size=4, c_grid=(1.0,),
                                  augmented_copies=n, jit_compile=False)
        assert info["head"]["augmented_copies"] == n
        expected.append(keras.ops.convert_to_numpy(norm(pooled_features(model, x, batch_size=4))))
    (clean, clean_y, clean_groups), (mixed, mixed_y, mixed_groups) = seen
    assert clean.shape == (8, WIDTH) and mixed.shape == (24, WIDTH)
    np.testing.assert_array_equal(clean, expected[0])  # exactly the standardised un-augmented features
    np.testing.assert_array_equal(clean_y, y)
    np.testing.assert_array_equal(clean_groups, groups)
    np.testing.assert_allclose(mixed[:8], expected[1], rtol=1e-6)  # the images first, then their copies
    np.testing.assert_array_equal(mixed_y, np.tile(y, 3))
    np.testing.assert_array_equal(mixed_groups, np.tile(groups, 3))  # a copy stays in its image's group
