"""Tests for covidxr.models: registry, builder, custom layers, weights handling, views."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from covidxr import models
from covidxr.models import BACKBONES, build_augmentation, build_model

SIZE = 32


def _images(n=4, seed=0, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


@pytest.fixture(scope="module")
def vgg16():
    keras.utils.set_random_seed(0)
    return build_model("vgg16", num_classes=2, image_size=SIZE, weights=None, augmentation=None)


@pytest.mark.jax
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_and_trains_one_step(name):
    keras.utils.set_random_seed(0)
    model = build_model(name, num_classes=2, image_size=SIZE, weights="none")
    assert model.inputs[0].dtype == "uint8"
    assert tuple(model.inputs[0].shape) == (None, SIZE, SIZE, 1)
    spec = BACKBONES[name]
    base = models.backbone_layer(model)
    assert base.get_layer(spec.last_conv_layer) is not None
    assert base.get_layer(spec.fine_tune_from) is not None
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x, y = _images(4), np.array([[0], [1], [0], [1]], np.float32)
    before = [w.copy() for w in model.get_layer("head").get_weights()]
    history = model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.get_layer("head").get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    probs = model.predict(x, verbose=0)
    assert probs.shape == (4, 1) and ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.jax
def test_three_classes_softmax():
    model = build_model("vgg16", num_classes=3, image_size=SIZE, weights=None)
    probs = model.predict(_images(3), verbose=0)
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.jax
def test_model_layout_and_preprocess_match_keras(vgg16):
    names = [layer.name for layer in vgg16.layers]
    assert names == ["image", "grey_to_rgb", "preprocess", "backbone", "pooling", "feature_norm", "dropout", "head"]
    x = _images(2)
    rgb = keras.ops.convert_to_numpy(vgg16.get_layer("grey_to_rgb")(x))
    assert rgb.shape == (2, SIZE, SIZE, 3) and rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb[..., 0], x[..., 0])
    np.testing.assert_array_equal(rgb[..., 2], x[..., 0])
    ours = keras.ops.convert_to_numpy(vgg16.get_layer("preprocess")(rgb))
    expected = keras.applications.vgg16.preprocess_input(rgb.copy())
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_augmentation_training_only_and_options():
    aug = build_augmentation(seed=0)
    kinds = [type(layer).__name__ for layer in aug.layers]
    assert "RandomFlip" not in kinds  # no flip by default (heart side), never vertical
    assert {"RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast"} <= set(kinds)
    flip = build_augmentation(hflip=True)
    flips = [layer for layer in flip.layers if isinstance(layer, keras.layers.RandomFlip)]
    assert len(flips) == 1 and flips[0].mode == "horizontal"
    assert build_augmentation(rotation=0, zoom=0, translation=0, contrast=0).layers == []

    keras.utils.set_random_seed(0)
    model = build_model("vgg16", num_classes=2, image_size=SIZE, weights=None, dropout=0.0)
    assert "augmentation" in [layer.name for layer in model.layers]
    x = _images(2, seed=3).astype("float32")
    aug_layer = model.get_layer("augmentation")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(aug_layer(x, training=False)), x)
    assert not np.allclose(keras.ops.convert_to_numpy(aug_layer(x, training=True)), x)
    with pytest.raises(ValueError, match=r"Expected rotation in \[0, 1\)\. Received: rotation=1\.5"):
        build_augmentation(rotation=1.5)


def test_feature_and_head_models_share_weights(vgg16):
    x = _images(5, seed=1)
    features = models.feature_model(vgg16).predict(x, verbose=0)
    assert features.shape == (5, 512)
    head = models.head_model(vgg16)
    assert head.get_layer("head") is vgg16.get_layer("head")
    np.testing.assert_allclose(head.predict(features, verbose=0), vgg16.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_gradcam_model_outputs_last_conv_and_predictions(name):
    model = build_model(name, num_classes=2, image_size=SIZE, weights=None)
    grad = models.gradcam_model(model)
    conv, preds = grad.predict(_images(2), verbose=0)
    expected = {"resnet50": 2048, "vgg16": 512}[name]
    assert conv.ndim == 4 and conv.shape[0] == 2 and conv.shape[-1] == expected
    np.testing.assert_allclose(preds, model.predict(_images(2), verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match=r"Received: layer='nope'"):
        models.gradcam_model(model, layer="nope")


@pytest.mark.jax
def test_saved_model_reloads_safe_mode(vgg16, tmp_path):
    path = tmp_path / "m.keras"
    vgg16.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = _images(3, seed=2)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), vgg16.predict(x, verbose=0), atol=1e-6)
    assert isinstance(loaded.get_layer("preprocess"), models.BackbonePreprocess)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)


def test_fine_tune_from_resolution(vgg16):
    base = models.backbone_layer(vgg16)
    n = len(base.layers)
    assert models.resolve_fine_tune_from(vgg16, "auto") == [l.name for l in base.layers].index("block5_conv1")
    assert models.resolve_fine_tune_from(vgg16, "all") == 0
    assert models.resolve_fine_tune_from(vgg16, -4) == n - 4
    assert models.resolve_fine_tune_from(vgg16, "-4") == n - 4
    assert models.resolve_fine_tune_from(vgg16, "block4_conv1") == [l.name for l in base.layers].index("block4_conv1")
    with pytest.raises(ValueError, match=r"layer name of backbone 'vgg16'.*Received: fine_tune_from='block9_conv1'"):
        models.resolve_fine_tune_from(vgg16, "block9_conv1")
    with pytest.raises(ValueError, match=rf"1 <= N <= {n}.*Received: fine_tune_from=-999"):
        models.resolve_fine_tune_from(vgg16, -999)
    unfrozen = models.set_trainable_from(vgg16, n - 4)
    assert unfrozen == [l.name for l in base.layers[n - 4:] if l.weights]
    assert all(not l.trainable for l in base.layers[: n - 4])


# --------------------------------------------------------------------------- weights

def test_weights_file_loads(tmp_path):
    keras.utils.set_random_seed(1)
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    model = build_model("vgg16", num_classes=2, image_size=SIZE, weights=str(path))
    for a, b in zip(models.backbone_layer(model).get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("source", ["vgg19", "vgg16"])
def test_weights_file_of_another_architecture(tmp_path, source):
    other = {"vgg19": keras.applications.VGG19, "vgg16": keras.applications.VGG16}[source]
    path = tmp_path / f"{source}.weights.h5"
    other(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)).save_weights(path)
    target = "vgg16" if source == "vgg19" else "vgg19"
    with pytest.raises(ValueError, match=rf"does not match backbone '{target}'.*Received: weights='.*{source}\.weights\.h5'"):
        build_model(target, num_classes=2, image_size=SIZE, weights=str(path))


def test_weights_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'imagenet', 'none' or the path.*Received: weights='.*nothere\.h5'"):
        build_model("vgg16", num_classes=2, image_size=SIZE, weights=str(tmp_path / "nothere.h5"))


def test_imagenet_download_failure_names_alternatives(monkeypatch):
    def offline(*, weights, **kwargs):
        if weights == "imagenet":
            raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- "
                            "[Errno -2] Name or service not known")
        return keras.applications.VGG16(weights=weights, **kwargs)

    spec = dataclasses.replace(BACKBONES["vgg16"], constructor=offline)
    monkeypatch.setitem(BACKBONES, "vgg16", spec)
    with pytest.raises(ConnectionError, match=r"Could not download the ImageNet weights.*weights='none'.*"
                                              r"weights=PATH.*Received: weights='imagenet'"):
        build_model("vgg16", num_classes=2, image_size=SIZE, weights="imagenet")


# --------------------------------------------------------------------------- bad input

def test_unknown_backbone_lists_valid():
    with pytest.raises(ValueError, match=r"Expected one of \['resnet50', 'vgg16', 'vgg19'.*\]\. Received: backbone='alexnet'"):
        build_model("alexnet", num_classes=2, image_size=SIZE, weights=None)


@pytest.mark.parametrize("size", [16, 31, 32.5, "64"])
def test_image_size_below_minimum(size):
    with pytest.raises(ValueError, match=rf"at least 32 px for backbone 'resnet50'\. Received: image_size={size!r}"):
        build_model("resnet50", num_classes=2, image_size=size, weights=None)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 1}, r"Received: num_classes=1"),
    ({"dropout": 1.0}, r"Received: dropout=1\.0"),
    ({"pooling": "sum"}, r"\['avg', 'max'\]\. Received: pooling='sum'"),
    ({"augmentation": "yes"}, r"Received: augmentation='yes'"),
])
def test_bad_options(kwargs, match):
    options = {"num_classes": 2, "image_size": SIZE, "weights": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_model("vgg16", **options)


# --------------------------------------------------------------------------- feature layers (truncated transfer)

CANDIDATES = [(name, layer) for name in sorted(BACKBONES) for layer in BACKBONES[name].feature_layers]
#: Channels of each candidate's output.
CHANNELS = {"block3_conv3": 256, "block4_conv3": 512, "block5_conv3": 512, "block3_conv4": 256,
            "block4_conv4": 512, "block5_conv4": 512, "conv3_block4_out": 512, "conv4_block6_out": 1024,
            "conv5_block3_out": 2048}


@pytest.fixture(scope="module")
def truncated():
    """``truncated(backbone, layer)``: a two-class model cut at ``layer``, built once per module."""
    built = {}

    def get(name, layer):
        if (name, layer) not in built:
            keras.utils.set_random_seed(0)
            built[name, layer] = build_model(name, num_classes=2, image_size=BACKBONES[name].min_size, weights=None,
                                             augmentation=None, feature_layer=layer)
        return built[name, layer]

    return get


def test_registry_names_three_feature_layers_per_backbone_shallow_to_deep():
    assert {name for name, _ in CANDIDATES} == set(BACKBONES)
    for name, spec in BACKBONES.items():
        names = models.backbone_layer_names(name)
        assert len(spec.feature_layers) == 3, name
        positions = [names.index(layer) for layer in spec.feature_layers]
        assert positions == sorted(positions), name
        assert spec.feature_layers[-1] == spec.last_conv_layer
        assert "input_layer" not in names and names is models.backbone_layer_names(name)  # cached


@pytest.mark.jax
@pytest.mark.parametrize("name, layer", CANDIDATES)
def test_feature_layer_cuts_the_backbone_for_every_candidate(truncated, tmp_path, name, layer):
    model = truncated(name, layer)
    base = models.backbone_layer(model)
    full = models.backbone_layer_names(name)
    kept = [l.name for l in base.layers if not isinstance(l, keras.layers.InputLayer)]
    assert kept == list(full[: full.index(layer) + 1])  # every layer above the feature layer is left out
    assert base.name == "backbone" and models.backbone_output_layer(model) == layer
    assert models.gradcam_layer(model) == layer and models.backbone_name(model) == name
    size = BACKBONES[name].min_size
    x = _images(2, seed=4, size=size)
    assert tuple(models.feature_model(model).outputs[0].shape) == (None, CHANNELS[layer])
    probs = keras.ops.convert_to_numpy(model(x, training=False))  # direct calls: no compiled predict step
    assert probs.shape == (2, 1)
    path = tmp_path / "cut.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)), probs, atol=1e-6)
    assert models.backbone_output_layer(loaded) == layer and len(models.backbone_layer(loaded).layers) == len(base.layers)


def test_no_feature_layer_keeps_the_whole_backbone(vgg16):
    assert models.backbone_output_layer(vgg16) == "block5_pool" and models.gradcam_layer(vgg16) == "block5_conv3"
    assert models.check_feature_layer("vgg16", None) is None and models.check_feature_layer("vgg16", " none ") is None
    cut = build_model("vgg16", num_classes=2, image_size=SIZE, weights=None, augmentation=None,
                      feature_layer="block5_pool")  # the backbone's own output layer: nothing to cut
    assert len(models.backbone_layer(cut).layers) == len(models.backbone_layer(vgg16).layers)


def test_unknown_feature_layer_lists_the_candidates():
    with pytest.raises(ValueError, match=r"Unknown feature_layer for backbone 'vgg16'.*candidate feature layers "
                                         r"\['block3_conv3', 'block4_conv3', 'block5_conv3'\].*"
                                         r"Received: feature_layer='block9_conv3'"):
        build_model("vgg16", num_classes=2, image_size=SIZE, weights=None, feature_layer="block9_conv3")
    with pytest.raises(ValueError, match=r"\['conv3_block4_out', 'conv4_block6_out', 'conv5_block3_out'\]; "
                                         r"similar names: \['conv4_block6_out'\]\. Received: feature_layer='block6_out'"):
        models.check_feature_layer("resnet50", "block6_out")
    with pytest.raises(ValueError, match=r"Expected feature_layer to be a layer name.*Received: feature_layer=3"):
        models.check_feature_layer("vgg19", 3)
    assert models.check_feature_layer("vgg19", "block2_pool") == "block2_pool"  # any layer, not only candidates


@pytest.mark.jax
@pytest.mark.parametrize("name, layer, first", [("vgg16", "block4_conv3", "block4_conv1"),
                                                ("vgg19", "block3_conv4", "block3_conv1"),
                                                ("resnet50", "conv4_block6_out", "conv4_block1_1_conv")])
def test_fine_tune_from_auto_is_the_feature_layers_block(truncated, name, layer, first):
    model = truncated(name, layer)
    names = [l.name for l in models.backbone_layer(model).layers]
    assert models.auto_fine_tune_from(model) == first
    index = models.resolve_fine_tune_from(model, "auto")
    assert names[index] == first and all(not n.startswith(first.split("_")[0] + "_") for n in names[:index])
    unfrozen = models.set_trainable_from(model, index)
    assert unfrozen and all(n in names[index:] for n in unfrozen) and unfrozen[-1].startswith(first.split("_")[0])
    assert models.resolve_fine_tune_from(model, "all") == 0


@pytest.mark.jax
def test_gradcam_and_memory_on_a_truncated_model(truncated, vgg16):
    from covidxr.gradcam import gradcam, gradcam_parts
    from covidxr.runtime import estimate_training_memory

    model = truncated("vgg16", "block4_conv3")
    x = _images(3, seed=5)
    front, rest, _ = gradcam_parts(model)
    conv = keras.ops.convert_to_numpy(front(x))
    assert conv.shape == (3, SIZE // 8, SIZE // 8, 512)  # block4_conv3 at 32 px: the feature layer itself
    maps, probs = gradcam(model, x)
    assert maps.shape == (3, SIZE, SIZE) and 0 <= maps.min() and maps.max() <= 1
    np.testing.assert_allclose(probs[:, 1], model.predict(x, verbose=0)[:, 0], atol=1e-5)
    conv, preds = models.gradcam_model(model).predict(x, verbose=0)
    assert conv.shape == (3, SIZE // 8, SIZE // 8, 512)
    np.testing.assert_allclose(preds, model.predict(x, verbose=0), atol=1e-6)
    shallow, _ = gradcam(model, x, layer="block3_conv3")  # an earlier layer can still be asked for
    assert shallow.shape == (3, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"Received: layer='block5_conv3'"):
        gradcam(model, x, layer="block5_conv3")  # left out of the model
    small = estimate_training_memory(model, batch_size=8, train_images=10, image_size=224)
    whole = estimate_training_memory(vgg16, batch_size=8, train_images=10, image_size=224)
    assert 0 < small["weights"] < whole["weights"] and small["total"] < whole["total"]
