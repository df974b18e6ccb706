"""Lung fields: the U-Net builder, the crop/mask geometry and its fallback, the bundled
segmenter's checksum, a tiny segmenter training run and ``covidxr lungs``."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxr import cli
from covidxr import lungs as L
from covidxr.lungmasks import unpad_mask
from covidxr.images.lungs import LUNG_MODES, apply_lungs, check_lungs, lung_box, main_components
from covidxr.models.segmenter import BUNDLED_SEGMENTER, build_unet, load_segmenter
from covidxr.training.segmentation import dice_iou, fit_segmenter


def _lungs(h, w):
    """Two ellipses where the synthetic X-rays have their lungs (tests/conftest.py)."""
    y, x = np.mgrid[0:h, 0:w]
    inside = np.zeros((h, w), bool)
    for cx in (w * 0.3, w * 0.7):
        inside |= ((x - cx) / (w * 0.17)) ** 2 + ((y - h * 0.5) / (h * 0.33)) ** 2 < 1
    return inside


def test_lung_box_and_crop_geometry():
    mask = np.zeros((100, 200), bool)
    mask[20:60, 50:150] = True  # a 40 x 100 box: 10% margins are 4 and 10 px
    assert lung_box(mask, margin=0.1) == (16, 64, 40, 160)
    assert lung_box(mask, margin=1.0) == (0, 100, 0, 200)  # clipped to the image
    grey = np.arange(100 * 200, dtype=np.int64).reshape(100, 200).astype(np.uint8)
    crop, box = apply_lungs(grey, mask, lungs="crop", margin=0.1)
    assert box == (16, 64, 40, 160) and crop.shape == (48, 120)
    np.testing.assert_array_equal(crop, grey[16:64, 40:160])
    blanked, _ = apply_lungs(grey + 1, mask, lungs="mask", margin=0.1)
    assert blanked.shape == (48, 120)
    assert blanked[0, 0] == 0 and blanked[24, 60] == (grey + 1)[40, 100]  # outside blanked, lungs kept
    same, box = apply_lungs(grey, mask, lungs="none")
    assert same is grey and box is None
    with pytest.raises(ValueError, match=r"one of none, crop, mask. Received: lungs='box'"):
        check_lungs("box")
    with pytest.raises(ValueError, match=r"an image and a mask of one shape. Received: shapes="):
        apply_lungs(grey, mask[:50], lungs="crop")
    assert check_lungs(None) == "none" and set(LUNG_MODES) == {"none", "crop", "mask"}


def test_a_stray_blob_does_not_widen_the_box():
    mask = np.zeros((100, 200), bool)
    mask[20:60, 50:90] = mask[20:60, 110:150] = True  # two lungs of 1600 px each
    mask[90:93, 190:193] = True  # a 9-px blob in the corner
    assert lung_box(mask, margin=0.0) == (20, 60, 50, 150)
    kept = main_components(mask)
    assert kept.sum() == 3200 and not kept[90:93, 190:193].any()
    mask[70:80, 60:100] = True  # a part of 400 px (a quarter of the largest) stays
    assert lung_box(mask, margin=0.0) == (20, 80, 50, 150)
    assert not main_components(np.zeros((4, 4), bool)).any()
    blanked, _ = apply_lungs(np.full((100, 200), 9, np.uint8), mask, lungs="mask", margin=0.0)
    assert blanked.shape == (60, 100) and blanked[0, 0] == 9


@pytest.mark.parametrize("mode", ["crop", "mask"])
def test_empty_or_tiny_mask_falls_back_to_the_whole_image(mode):
    grey = np.full((50, 40), 7, np.uint8)
    sliver = np.zeros((50, 40), bool)
    sliver[10, 5:25] = True  # 1% of the image
    for mask in (np.zeros((50, 40), bool), sliver):
        out, box = apply_lungs(grey, mask, lungs=mode)
        assert box is None and out is grey
    assert lung_box(np.zeros((5, 5), bool)) is None


def test_unpad_mask_returns_the_image_geometry():
    truth = _lungs(60, 90)
    from covidxr.images import preprocess

    square = preprocess(truth.astype(np.uint8) * 255, image_size=64) / 255.0
    back = unpad_mask(square, (60, 90))
    assert back.shape == (60, 90)
    dice, _ = dice_iou(back[None], truth[None])
    assert dice[0] > 0.95


def test_dice_iou():
    a = np.zeros((2, 4, 4), bool)
    b = a.copy()
    a[0, :2], b[0, :1] = True, True  # 8 vs 4 pixels, 4 shared
    dice, iou = dice_iou(a, b)
    np.testing.assert_allclose(dice, [8 / 12, 1.0])
    np.testing.assert_allclose(iou, [0.5, 1.0])


def test_unet_shapes_and_bad_options():
    model = build_unet(input_shape=(32, 32, 1), filters=2, depth=2)
    assert model.output_shape == (None, 32, 32, 1)
    with pytest.raises(ValueError, match=r"divisible by downsample \* 2\*\*depth.*Received: input_shape=\(30, 30, 1\)"):
        build_unet(input_shape=(30, 30, 1), depth=2)


def test_tiny_unet_learns_synthetic_lungs():
    rng = np.random.default_rng(0)
    truth = np.stack([np.roll(_lungs(32, 32), int(s), axis=1) for s in rng.integers(-3, 4, 16)])
    images = np.where(truth, 60, 200).astype(np.uint8) + rng.integers(0, 30, truth.shape).astype(np.uint8)
    model = build_unet(input_shape=(32, 32, 1), filters=4, depth=2)
    history = fit_segmenter(model, images[..., None], truth[..., None].astype(np.float32), epochs=12,
                            batch_size=4, learning_rate=1e-2, seed=0)
    assert history[-1]["loss"] < history[0]["loss"]
    predicted = model.predict(images[..., None].astype("float32"), verbose=0)[..., 0] >= 0.5
    assert dice_iou(predicted, truth)[0].mean() > 0.8


def test_bundled_segmenter_loads_offline_and_refuses_a_tampered_file(tmp_path):
    started = time.perf_counter()
    model, info = load_segmenter()
    assert time.perf_counter() - started < 5
    assert info["image_size"] == 256 and model.output_shape == (None, 256, 256, 1)
    pin = json.loads(BUNDLED_SEGMENTER.with_name("lung_unet.json").read_text())
    assert info["sha256"] == pin["sha256"] and pin["dice"] >= 0.90
    tampered = tmp_path / "lung_unet.keras"
    data = bytearray(BUNDLED_SEGMENTER.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"sha256 to be [0-9a-f]{64} \(the file is damaged or was replaced\)"):
        load_segmenter(tampered, sha256=pin["sha256"])
    with pytest.raises(FileNotFoundError, match=r"lung segmenter.*Received: path="):
        load_segmenter(tmp_path / "none.keras")


def test_lungs_train_and_predict_commands(collection, tmp_path, capsys):
    """`covidxr lungs train` on the synthetic collection's masks, then `lungs predict` with it."""
    frame = pd.read_csv(collection / "metadata.csv")
    masks = tmp_path / "masks"
    masks.mkdir()
    names = [n for n in frame["filename"] if (collection / "images" / n).is_file()]
    for name in names:
        with Image.open(collection / "images" / name) as img:
            size = img.size
        stem = name.rsplit(".", 1)[0]
        Image.fromarray(_lungs(size[1], size[0]).astype(np.uint8) * 255).save(masks / f"{stem}_mask.png")
    code = cli.main(["lungs", "train", "--data-dir", str(collection), "--masks", str(masks), "--out",
                     str(tmp_path / "seg"), "--image-size", "32", "--filters", "2", "--depth", "2", "--epochs", "2",
                     "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    folder = next((tmp_path / "seg").iterdir())
    metrics = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert 0 <= metrics["dice"]["value"] <= 1 and metrics["n_test"] > 0 and config["image_size"] == 32
    split = pd.read_csv(folder / "split.csv")
    assert not set(split.loc[split.part == "train", "group"]) & set(split.loc[split.part == "test", "group"])
    images = [str(collection / "images" / n) for n in names[:3]]
    assert cli.main(["lungs", "predict", *images, "--out", str(tmp_path / "pred"), "--segmenter", str(folder)]) == 0
    written = pd.read_csv(tmp_path / "pred" / "masks.csv")
    assert (tmp_path / "pred" / "lung_crops.png").is_file()
    assert len(written) == 3 and all((tmp_path / "pred").joinpath(p.split("/")[-1]).is_file() for p in written["mask"])
    with Image.open(written["mask"][0]) as m, Image.open(images[0]) as i:
        assert m.size == i.size
    capsys.readouterr()
    assert cli.main(["lungs", "predict", *images, "--out", str(tmp_path / "pred")]) == 2  # not empty: refused
    assert "new or empty folder" in capsys.readouterr().err


def test_cache_key_follows_lungs_and_the_masks(collection, tmp_path, monkeypatch):
    from covidxr.data import load_dataset
    from covidxr.images import build_cache, cache_key
    from covidxr.lungmasks import lung_mask_files

    frame = load_dataset(collection, task="covid-vs-rest").iloc[:6]
    with pytest.raises(ValueError, match=r"a 'lung_mask' column for lungs='crop'"):
        cache_key(frame, image_size=32, lungs="crop")
    framed = frame.assign(lung_mask=lung_mask_files(frame, cache_dir=tmp_path).to_numpy())
    assert all(p.is_file() and p.parent.parent.name == "lungs" for p in framed["lung_mask"])
    keys = {mode: cache_key(framed, image_size=32, lungs=mode) for mode in LUNG_MODES}
    assert len(set(keys.values())) == 3 and keys["none"] == cache_key(frame, image_size=32)
    other = framed.assign(lung_mask=[p.with_name("0" * 64 + ".png") for p in framed["lung_mask"]])
    assert cache_key(other, image_size=32, lungs="crop") != keys["crop"]  # another mask, another cache
    monkeypatch.setattr("covidxr.images.lungs.LUNG_GEOMETRY", 99)  # another crop geometry, another cache
    assert cache_key(framed, image_size=32, lungs="crop") != keys["crop"]
    assert cache_key(frame, image_size=32) == keys["none"]
    monkeypatch.undo()
    whole = build_cache(frame, image_size=32, cache_dir=tmp_path, progress=False)
    crops = build_cache(framed, image_size=32, cache_dir=tmp_path, progress=False, lungs="crop")
    assert crops.key == keys["crop"] and crops.settings["lungs"] == "crop"
    assert not np.array_equal(np.asarray(whole.images), np.asarray(crops.images))


def test_train_with_lung_crops_and_evaluate_predicted_masks(collection, tmp_path):
    from covidxr.evaluate import evaluate_run
    from covidxr.train import TrainConfig, train

    config = TrainConfig(data_dir=str(collection), backbone="vgg16", weights="none", image_size=32, batch_size=8,
                         epochs=1, fine_tune_epochs=0, runs_dir=str(tmp_path / "runs"), lungs="crop",
                         cache_dir=str(tmp_path / "cache"), verbose=0)
    run = train(config)
    saved = json.loads((run / "config.json").read_text())
    assert saved["lungs"] == "crop" and saved["preprocessing"]["lungs"] == "crop"
    assert len(saved["lungs_segmenter"]) == 64
    out = evaluate_run(run, lung_masks="predicted", n_bootstrap=20)
    metrics = json.loads((out / "metrics.json").read_text())
    sources = metrics["lung_mass"]["mask_sources"]
    assert sources["predicted"] == metrics["lung_mass"]["n_matched"] > 0 and sources["from_files"] == 0
    assert len(list((out / "lung_masks").glob("*_mask.png"))) == sources["predicted"]
