"""Tests for covidxr.training: the head's feature standardisation, the exact validation figures
that model selection follows, and the underfit warning of phase 1."""

from __future__ import annotations

import logging
import warnings

import keras
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from covidxr.models import build_model, feature_model, head_model
from covidxr.training import (SaveBest, best_index, adapt_feature_norm, exact_scores, fine_tune, fit_head, phases, schedules,
                              set_arrays, validation_logs, variable_arrays)

SIZE = 32
WIDTH = 512  # VGG16's pooled width


def _vgg(seed=0):
    keras.utils.set_random_seed(seed)
    return build_model("vgg16", num_classes=2, image_size=SIZE, weights=None, augmentation=None, seed=seed)


def _scaled_problem(n, seed):
    """Raw-VGG-like pooled features: 512 values uniform in 0..250 (non-negative, large mean and
    scale); the label is a fixed random linear rule on 64 of them (about 28% positives)."""
    z = np.random.default_rng(seed).random((n, WIDTH)).astype(np.float32)
    w = np.random.default_rng(99).standard_normal(64)
    score = (z[:, :64] - 0.5) @ w
    return 250 * z, (score > 0.55 * score.std()).astype(np.int64)


def _blank(n):
    return np.zeros((n, SIZE, SIZE, 1), np.uint8)


def _learns(losses) -> bool:
    """The head's "Done when": the last epoch's loss at most half the first's, and no epoch's
    loss more than 10% above the previous one's."""
    rises = [b / a for a, b in zip(losses, losses[1:])]
    return losses[-1] <= 0.5 * losses[0] and max(rises) <= 1.1


# --------------------------------------------------------------------------- standardisation

@pytest.mark.jax
@pytest.mark.parametrize("standardize", [True, False])
def test_head_learns_raw_features_scaled_by_250_only_when_standardised(standardize, monkeypatch):
    if not standardize:  # the same phase 1 with the adaptation taken out: FeatureNorm is the identity
        monkeypatch.setattr(phases, "adapt_feature_norm", lambda model, features: None)
    x, y = _scaled_problem(384, seed=0)
    xv, yv = _scaled_problem(128, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history, info = fit_head(_vgg(), _blank(384), y, _blank(128), yv, num_classes=2, epochs=20, batch_size=32,
                                 strategy="class-weight", features=(x, xv), verbose=0)  # default lr 1e-3
    losses = history.history["loss"]
    assert len(losses) == 20 and info["feature_shape"] == [384, WIDTH]
    assert _learns(losses) is standardize, f"standardize={standardize}: losses {np.round(losses, 3).tolist()}"
    if standardize:  # (without it, JAX's clipped loss saturates at training AUC 0.5 and warns)
        assert info["train_auc"] > 0.95 and not [w for w in caught if "did not fit" in str(w.message)]


@pytest.mark.filterwarnings("ignore:The head did not fit its own training data")
@pytest.mark.parametrize("cache_features", [True, False])
def test_phase1_adapts_the_standardisation_on_raw_training_features_and_phase2_keeps_it(cache_features):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (12, SIZE, SIZE, 1), dtype=np.uint8)
    y = np.arange(12) % 2
    model = _vgg()
    norm = model.get_layer("feature_norm")
    raw = keras.ops.convert_to_numpy(feature_model(model)(x))
    fit_head(model, x, y, x[:4], y[:4], num_classes=2, epochs=1, batch_size=4, cache_features=cache_features,
             verbose=0)
    mean, variance = (keras.ops.convert_to_numpy(v) for v in (norm.adapt_mean, norm.adapt_variance))
    np.testing.assert_allclose(mean, raw.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(variance, raw.var(axis=0), rtol=1e-3, atol=1e-4)
    # cached features stay raw; the head model standardises them and equals the full model
    np.testing.assert_allclose(keras.ops.convert_to_numpy(feature_model(model)(x)), raw, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head_model(model)(raw)),
                               model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    if not cache_features:
        return
    fine_tune(model, x, y, x[:4], y[:4], num_classes=2, epochs=1, batch_size=4, learning_rate=1e-3, verbose=0)
    assert not norm.trainable and not norm.trainable_weights
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.adapt_mean), mean)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.adapt_variance), variance)


def test_standardisation_is_saved_and_restored_by_assignment(tmp_path):
    x = np.random.default_rng(1).integers(0, 255, (4, SIZE, SIZE, 1), dtype=np.uint8)
    model = _vgg()
    adapt_feature_norm(model, np.random.default_rng(2).normal(100, 20, (50, WIDTH)))
    norm = model.get_layer("feature_norm")
    assert isinstance(norm, keras.layers.Normalization)
    assert {id(v) for v in norm.weights} <= {id(v) for v in model.non_trainable_weights}  # in every checkpoint
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    # a resume or the best checkpoint assigns the variables of a freshly built model: the layer
    # must read them (keras.layers.Normalization itself would keep its mean 0 and variance 1)
    fresh = _vgg(seed=5)
    set_arrays(fresh.variables, variable_arrays(model.variables))
    np.testing.assert_allclose(fresh.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cache_features, rows, match", [
    (False, 6, r"Expected cache_features=True when features are given.*Received: cache_features=False"),
    (True, 5, r"Expected features of shapes \(6, 512\) and \(4, 512\).*Received: shapes=\(5, 512\)"),
])
def test_bad_features_are_refused(cache_features, rows, match):
    features = (np.zeros((rows, WIDTH)), np.zeros((4, WIDTH)))
    with pytest.raises(ValueError, match=match):
        fit_head(_vgg(), _blank(6), np.arange(6) % 2, _blank(4), np.arange(4) % 2, num_classes=2, epochs=1,
                 features=features, cache_features=cache_features, verbose=0)


# --------------------------------------------------------------------------- exact validation

def test_validation_logs_are_keras_loss_and_sklearn_scores():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    p = rng.uniform(0.01, 0.99, (40, 1))
    logs = validation_logs(y, p)
    keras_loss = np.mean(keras.ops.convert_to_numpy(
        keras.losses.binary_crossentropy(y[:, None].astype("float32"), p.astype("float32"))))
    assert logs["val_loss"] == pytest.approx(float(keras_loss), rel=1e-5)
    assert logs["val_auc"] == roc_auc_score(y, p[:, 0]) and logs["val_pr_auc"] == average_precision_score(y, p[:, 0])
    y3 = np.arange(30) % 3
    p3 = keras.ops.convert_to_numpy(keras.ops.softmax(rng.normal(size=(30, 3)))).astype(np.float64)
    logs3 = validation_logs(y3, p3)
    keras_loss3 = np.mean(keras.ops.convert_to_numpy(keras.losses.categorical_crossentropy(np.eye(3)[y3], p3)))
    assert logs3["val_loss"] == pytest.approx(float(keras_loss3), rel=1e-5)
    assert logs3["val_auc"] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr", average="macro"), abs=1e-12)
    assert np.isnan(exact_scores(np.zeros(4, int), np.full((4, 1), 0.3))["auc"])
    assert validation_logs(np.array([0, 1]), np.array([[1.0], [0.0]]))["val_loss"] == pytest.approx(-np.log(1e-7))


def test_model_selection_follows_the_exact_validation_auc_not_keras_buckets():
    """Scores within 0.5 +- 0.002 fall into one or two of Keras' 200 AUC buckets, so its AUC is
    about 0.5; the exact one, which the head's direction makes high, is what every callback sees."""
    x, y = _scaled_problem(256, seed=0)
    xv, yv = _scaled_problem(76, seed=1)
    model = _vgg()
    adapt_feature_norm(model, x)
    head = model.get_layer("head")
    direction = np.zeros((WIDTH, 1), np.float32)
    direction[:64, 0] = np.random.default_rng(99).standard_normal(64)
    head.kernel.assign(1e-4 * direction)
    head.bias.assign(np.zeros(1, np.float32))

    class Spy(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows = []

        def on_epoch_end(self, epoch, logs=None):
            probs = self.model.predict(xv, verbose=0)
            bucketed = keras.metrics.AUC()
            bucketed.update_state(yv[:, None], probs)
            self.rows.append((logs["val_auc"], roc_auc_score(yv, probs[:, 0]), float(bucketed.result())))

    early_stopping, reduce_lr = schedules(5)
    saver, spy = SaveBest(model), Spy()
    history, _ = fit_head(model, _blank(256), y, _blank(76), yv, num_classes=2, epochs=3, batch_size=32,
                          learning_rate=1e-7, features=(x, xv), callbacks=[early_stopping, reduce_lr, saver, spy],
                          verbose=0)
    logged, exact, bucketed = (np.array(column) for column in zip(*spy.rows))
    np.testing.assert_allclose(logged, exact, rtol=0, atol=1e-12)
    assert np.all(exact > 0.75) and np.all(np.abs(exact - bucketed) > 0.2)
    assert history.history["val_auc"] == pytest.approx(list(exact), abs=1e-12)
    # the callbacks follow the exact validation loss, improvements counted only above MIN_DELTA
    losses = history.history["val_loss"]
    assert saver.best == pytest.approx(losses[best_index(losses)], abs=1e-12)
    assert early_stopping.best == pytest.approx(losses[best_index(losses)], abs=1e-12)
    assert reduce_lr.best == pytest.approx(losses[best_index(losses)], abs=1e-12)


# --------------------------------------------------------------------------- underfit warning

def test_a_head_that_does_not_fit_its_training_data_warns(caplog):
    x, _ = _scaled_problem(64, seed=0)
    y = np.random.default_rng(3).permutation(np.arange(64) % 2)  # nothing to learn in one tiny step
    logger = logging.getLogger("covidxr.train")
    logger.addHandler(caplog.handler)  # the run's logger may not propagate (train() turns that off)
    try:
        with pytest.warns(UserWarning, match=r"did not fit its own training data: training ROC AUC 0\.\d+"):
            _, info = fit_head(_vgg(), _blank(64), y, _blank(8), y[:8], num_classes=2, epochs=1, batch_size=32,
                               learning_rate=1e-7, features=(x, x[:8]), verbose=0)
    finally:
        logger.removeHandler(caplog.handler)
    assert info["train_auc"] < phases.UNDERFIT_AUC
    assert any(r.levelno == logging.WARNING and "did not fit" in r.getMessage() for r in caplog.records)


def test_a_diverged_run_says_the_loss_became_nan_with_the_epoch_and_learning_rate():
    from covidxr.training.callbacks import ExactValidation

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.5), loss="binary_crossentropy")
    model.set_weights([np.full((4, 1), np.nan, np.float32), np.zeros(1, np.float32)])  # what divergence leaves
    validator = ExactValidation(np.ones((6, 4), np.float32), np.array([0, 1] * 3), batch_size=4, phase=2)
    validator.set_model(model)
    with pytest.raises(ValueError, match=r"Expected training to converge; the loss became NaN in phase 2 epoch 3 at "
                                         r"learning rate 5\.00e-01 \(training diverged: .*\)\. Received: loss=nan$"):
        validator.on_epoch_end(2, {"loss": float("nan")})
