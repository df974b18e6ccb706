"""Tests for covidxr.sampling: per-epoch shuffling, imbalance strategies, batches."""

from __future__ import annotations

import numpy as np
import pytest

from covidxr import figures, sampling

# 30 / 10 / 5 images of classes 0 / 1 / 2
LABELS = np.repeat([0, 1, 2], [30, 10, 5])
IMAGES = np.arange(len(LABELS), dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)


def _seq(strategy="none", labels=LABELS, num_classes=3, **kwargs):
    images = IMAGES[: len(labels)] if len(labels) <= len(IMAGES) else np.zeros((len(labels), 4, 4, 1), np.uint8)
    return sampling.BatchSequence(images, labels, num_classes=num_classes, strategy=strategy, **kwargs)


def test_strategies_listed():
    assert sampling.STRATEGIES == ("none", "class-weight", "oversample", "undersample")


@pytest.mark.parametrize("strategy", ["none", "class-weight"])
def test_no_resampling_each_image_once_shuffled_per_epoch(strategy):
    seq = _seq(strategy, seed=3)
    e0, e1 = seq.epoch_indices(0), seq.epoch_indices(1)
    assert sorted(e0) == list(range(len(LABELS))) == sorted(e1)
    assert not np.array_equal(e0, e1)                      # reshuffled
    np.testing.assert_array_equal(e0, _seq(strategy, seed=3).epoch_indices(0))   # seeded
    assert not np.array_equal(e0, _seq(strategy, seed=4).epoch_indices(0))
    np.testing.assert_array_equal(seq.class_counts(0), [30, 10, 5])


def test_oversample_equal_counts_every_image_kept():
    seq = _seq("oversample")
    for epoch in range(3):
        idx = seq.epoch_indices(epoch)
        np.testing.assert_array_equal(np.bincount(LABELS[idx]), [30, 30, 30])
        assert set(idx) == set(range(len(LABELS)))        # minority drawn with replacement on top
    assert not np.array_equal(np.sort(seq.epoch_indices(0)), np.sort(seq.epoch_indices(1)))
    assert len(seq) == int(np.ceil(90 / 32))


def test_undersample_equal_counts_different_subsets():
    seq = _seq("undersample", batch_size=4)
    subsets = []
    for epoch in range(4):
        idx = seq.epoch_indices(epoch)
        np.testing.assert_array_equal(np.bincount(LABELS[idx]), [5, 5, 5])
        assert len(np.unique(idx)) == 15                   # without replacement
        subsets.append(frozenset(idx[LABELS[idx] == 0]))
    assert len(set(subsets)) == 4                          # a different majority subset each epoch
    assert len(seq) == 4


def test_class_weights_inverse_to_frequency():
    weights = sampling.class_weights(LABELS, num_classes=3)
    assert set(weights) == {0, 1, 2}
    assert weights[0] * 30 == pytest.approx(weights[1] * 10) == pytest.approx(weights[2] * 5)
    assert weights[0] == pytest.approx(45 / (3 * 30))
    two = sampling.class_weights(np.array([0, 0, 0, 1]), num_classes=3)
    assert two[2] == 1.0 and two[1] == pytest.approx(2.0)   # absent class: neutral weight


def test_epoch_advances_on_epoch_end():
    seq = _seq("undersample")
    first = seq._indices.copy()
    seq.on_epoch_end()
    assert seq.epoch == 1
    np.testing.assert_array_equal(seq._indices, seq.epoch_indices(1))
    assert not np.array_equal(first, seq._indices)


def test_validation_order_is_kept():
    seq = _seq("none", shuffle=False, batch_size=7)
    xs = [seq[i][0] for i in range(len(seq))]
    np.testing.assert_array_equal(np.concatenate(xs)[:, 0, 0, 0], np.arange(45))
    seq.on_epoch_end()
    np.testing.assert_array_equal(seq[0][0][:, 0, 0, 0], np.arange(7))


def test_batches_multiclass_one_hot():
    seq = _seq("oversample", batch_size=16, seed=1)
    x, y = seq[0]
    assert x.dtype == np.uint8 and x.shape == (16, 4, 4, 1)
    assert y.dtype == np.float32 and y.shape == (16, 3)
    idx = seq.epoch_indices(0)[:16]
    np.testing.assert_array_equal(x[:, 0, 0, 0], idx)       # images in the epoch's order
    np.testing.assert_array_equal(y.argmax(1), LABELS[idx])
    last_x, _ = seq[len(seq) - 1]
    assert len(last_x) == 90 - 16 * 5
    assert seq[-1][0].shape == last_x.shape
    with pytest.raises(IndexError, match=r"batch index in \[0, 5\]. Received: index=6"):
        seq[6]


def test_batches_binary_targets_and_memmap(tmp_path):
    labels = np.array([0, 1] * 5)
    store = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(10, 4, 4, 1))
    store[:] = np.arange(10, dtype=np.uint8)[:, None, None, None]
    store.flush()
    images = np.load(tmp_path / "x.npy", mmap_mode="r")
    seq = sampling.BatchSequence(images, labels, num_classes=2, batch_size=4, seed=2)
    x, y = seq[0]
    assert y.shape == (4, 1) and y.dtype == np.float32
    np.testing.assert_array_equal(y[:, 0], labels[x[:, 0, 0, 0]])


def test_fit_calls_on_epoch_end():
    import keras

    labels = np.array([0] * 12 + [1] * 4)
    images = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 1), dtype=np.uint8)
    seq = sampling.BatchSequence(images, labels, num_classes=2, batch_size=8, strategy="undersample")
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    history = model.fit(seq, epochs=3, verbose=0)
    assert len(history.history["loss"]) == 3
    assert seq.epoch >= 2


def test_epoch_class_counts_and_plot():
    counts = sampling.epoch_class_counts(LABELS, num_classes=3, classes=["a", "b", "c"], epochs=2)
    first = counts[counts.epoch == 0].set_index(["strategy", "class"])["images"]
    assert first["oversample"].tolist() == [30, 30, 30]
    assert first["undersample"].tolist() == [5, 5, 5]
    assert first["none"].tolist() == first["class-weight"].tolist() == [30, 10, 5]
    fig = figures.plot_epoch_balance(counts)
    assert len(fig.axes[0].patches) == 12


def test_errors():
    with pytest.raises(ValueError, match=r"Unknown strategy. Expected one of \('none', 'class-weight', "
                                         r"'oversample', 'undersample'\). Received: strategy='smote'"):
        _seq("smote")
    with pytest.raises(ValueError, match=r"uint8 array of shape \(n, H, W, 1\). Received: images with shape=\(45, 4, 4\)"):
        sampling.BatchSequence(IMAGES[..., 0], LABELS, num_classes=3)
    with pytest.raises(ValueError, match=r"Received: images with shape=\(45, 4, 4, 1\), dtype=float32"):
        sampling.BatchSequence(IMAGES.astype(np.float32), LABELS, num_classes=3)
    with pytest.raises(ValueError, match=r"one label per image \(45 images\). Received: labels of length 44"):
        sampling.BatchSequence(IMAGES, LABELS[:-1], num_classes=3)
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\]. Received: label=2"):
        sampling.BatchSequence(IMAGES, LABELS, num_classes=2)
    with pytest.raises(ValueError, match=r"num_classes to be an integer >= 2. Received: num_classes=1"):
        sampling.class_weights(LABELS, num_classes=1)
    with pytest.raises(ValueError, match=r"integer class indices. Received: labels with shape=\(45,\), dtype=float64"):
        sampling.class_weights(LABELS.astype(float), num_classes=3)
    with pytest.raises(ValueError, match=r"batch_size to be a positive integer. Received: batch_size=0"):
        _seq(batch_size=0)


def test_real_data_warm_cache_epoch_20x_faster_than_decoding(real_data, tmp_path):
    import time
    import warnings

    from covidxr import data, images

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = data.load_dataset(real_data)
    cache = images.build_cache(frame, image_size=224, cache_dir=tmp_path, progress=False)
    seq = sampling.BatchSequence(cache.images, cache.labels(("non-covid", "covid")), num_classes=2,
                                 strategy="oversample")
    for i in range(len(seq)):      # warm: page the memmap in
        seq[i]
    start = time.perf_counter()
    served = sum(len(seq[i][0]) for i in range(len(seq)))
    cached = served / (time.perf_counter() - start)
    paths = list(cache.rows["path"][:150])
    start = time.perf_counter()
    for path in paths:
        images.preprocess(images.load_image(path), image_size=224)
    decoded = len(paths) / (time.perf_counter() - start)
    assert cached > 20 * decoded, (cached, decoded)
