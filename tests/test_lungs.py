"""covidxr.evaluation.lungs: the share of Grad-CAM mass inside lung masks — masks matched by
file name, put through the image's own preprocessing geometry, shares, the bootstrap mean, and
``covidxr evaluate --lung-masks`` on the tiny trained run; the real snapshot's masks."""

from __future__ import annotations

import json
import re
import shutil

import matplotlib.pyplot as plt
import matplotlib.text
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxr import cli
from covidxr import evaluate as E
from covidxr import evaluation as M
from covidxr.figures import DATASET_ATTRIBUTION, plot_lung_mass
from covidxr.images import preprocess


def _lungs(h, w):
    """Two ellipses where the synthetic X-rays have their lungs (tests/conftest.py), uint8 0/255."""
    y, x = np.mgrid[0:h, 0:w]
    inside = np.zeros((h, w), bool)
    for cx in (w * 0.3, w * 0.7):
        inside |= ((x - cx) / (w * 0.17)) ** 2 + ((y - h * 0.5) / (h * 0.33)) ** 2 < 1
    return (inside * 255).astype(np.uint8)


def test_find_and_match_masks(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"folder of lung masks.*Received: masks_dir="):
        M.find_lung_masks(tmp_path / "nowhere")
    (tmp_path / "README.md").write_text("masks")
    with pytest.raises(FileNotFoundError, match=r"mask files named <image stem>_mask.png in the folder. Received:"):
        M.find_lung_masks(tmp_path)
    for name in ("a_mask.png", "b_mask.png.png", "a_mask.png.png", "_mask.png"):
        Image.fromarray(_lungs(8, 8)).save(tmp_path / name, format="PNG")
    masks = M.find_lung_masks(tmp_path)
    assert {k: v.name for k, v in masks.items()} == {"a": "a_mask.png", "b": "b_mask.png.png"}
    table = M.match_masks(["images/a.jpg", "images/b.png", "images/c.png", "x/b.jpeg"], masks)
    assert table["status"].tolist() == ["matched", "ambiguous", "no mask", "ambiguous"]
    assert table["mask"].tolist() == [masks["a"], None, None, None]


def test_mask_follows_the_image_geometry():
    image = _lungs(60, 90)  # landscape: padded top and bottom at 32 px
    small = M.prepare_mask(image, image_shape=(60, 90), image_size=32, resize="pad")
    big = M.prepare_mask(Image.fromarray(_lungs(240, 360)), image_shape=(60, 90), image_size=32, resize="pad")
    expected = preprocess(image, image_size=32, resize="pad") >= 128
    assert small.dtype == bool and small.shape == (32, 32)
    np.testing.assert_array_equal(small, expected)
    assert (big != expected).mean() < 0.03  # a mask at 4x resolution lands on the same pixels
    full = M.prepare_mask(np.full((60, 90), 255, np.uint8), image_shape=(60, 90), image_size=32)
    assert full[11:21].all() and not full[:5].any() and not full[-5:].any()  # the padding is not lung
    cropped = M.prepare_mask(np.full((60, 90), 255, np.uint8), image_shape=(60, 90), image_size=32, resize="crop")
    assert cropped.all()
    with pytest.raises(ValueError, match=r"mask with the image's aspect ratio \(within 2%\). Received: "
                                         r"mask_shape=\(60, 60\), image_shape=\(60, 90\)"):
        M.prepare_mask(np.zeros((60, 60)), image_shape=(60, 90), image_size=32)


def test_mass_shares():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:12, 2:14] = True
    maps = rng.random((4, 16, 16))
    maps[0] = np.where(masks[0], maps[0], 0.0)  # all inside the mask
    maps[1] = 1.0  # uniform
    maps[2] = 0.0  # no positive evidence
    inside, area = M.mass_shares(maps, masks)
    assert inside[0] == pytest.approx(1.0) and inside[1] == pytest.approx(area[1]) and np.isnan(inside[2])
    assert 0 <= inside[3] <= 1 and area == pytest.approx(np.full(4, 96 / 256))
    with pytest.raises(ValueError, match=r"maps and masks of one shape \(n, S, S\). Received: shapes="):
        M.mass_shares(maps, masks[:, :8])


def test_summary_leaves_out_empty_maps():
    table = pd.DataFrame({"group": ["g1", "g1", "g2", "g3", "g4"], "label": ["covid", "covid", "covid", "x", "x"],
                          "mass_inside": [0.2, 0.4, np.nan, 0.6, 0.8], "mask_area": [0.3] * 5})
    table["excess"] = table["mass_inside"] - table["mask_area"]
    summary = M.lung_mass_summary(table, n_bootstrap=50, seed=0)
    assert summary["mass_inside"]["value"] == pytest.approx(0.5) and summary["n_measured"] == 4
    assert summary["n_groups"] == 3 and summary["excess"]["value"] == pytest.approx(0.2)
    assert summary["mass_inside"]["ci_low"] <= 0.5 <= summary["mass_inside"]["ci_high"]
    empty = M.lung_mass_summary(table.iloc[2:3], n_bootstrap=10)
    assert empty["n_measured"] == 0 and np.isnan(empty["mass_inside"]["value"])


@pytest.fixture(scope="module")
def masks_dir(tiny_run, tmp_path_factory):
    """Masks for every test image of the tiny run but the first (written at twice the size)."""
    folder = tmp_path_factory.mktemp("masks")
    test = pd.read_csv(tiny_run / "predictions.csv").query("part == 'test'")
    for image in test["image"].iloc[1:]:
        stem = re.sub(r"\.[^.]+$", "", image.split("/")[-1])
        Image.fromarray(_lungs(144, 120)).save(folder / f"{stem}_mask.png")
    (folder / "README.md").write_text("synthetic lungs")
    return folder


def test_lung_mass_on_the_tiny_run(tiny_run, masks_dir):
    block, table, examples = M.lung_mass(tiny_run, masks_dir, n_bootstrap=50, examples=2)
    n_test = int((pd.read_csv(tiny_run / "predictions.csv")["part"] == "test").sum())
    assert block["n_images"] == n_test and block["n_matched"] == n_test - 1 and block["n_no_mask"] == 1
    assert block["n_measured"] + block["n_empty_map"] == len(table) == n_test - 1
    assert list(table.columns) == ["image", "patient", "group", "label", "mask", "prob", "mass_inside", "mask_area",
                                   "excess"]
    measured = table["mass_inside"].dropna()
    assert ((measured >= 0) & (measured <= 1)).all() and (table["mask_area"].between(0.05, 0.6)).all()
    assert all(m == re.sub(r"\.[^.]+$", "", i.split("/")[-1]) + "_mask.png" for i, m in zip(table["image"],
                                                                                          table["mask"]))
    assert block["class"] == "covid" and block["mass_inside"]["value"] == pytest.approx(measured.mean())
    assert len(examples["table"]) == min(2, block["n_measured"])
    assert examples["images"].shape[1:] == examples["masks"].shape[1:] == (32, 32)
    fig = plot_lung_mass(examples, block, run="tiny")
    texts = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
    assert DATASET_ATTRIBUTION.rstrip(".") in texts and "lungVAE" in texts and "mass inside the lungs · tiny" in texts
    assert sum(len(ax.images) for ax in fig.axes) == len(examples["table"])
    none = {"table": table.iloc[:0], "images": examples["images"][:0], "maps": examples["maps"][:0],
            "masks": examples["masks"][:0]}
    texts = " ".join(t.get_text() for t in plot_lung_mass(none, block).findobj(matplotlib.text.Text))
    assert "no test image with a usable mask" in texts
    plt.close("all")


def test_evaluate_with_lung_masks_and_the_cli(tiny_run, masks_dir, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    assert cli.main(["evaluate", "--run", str(run), "--lung-masks", str(masks_dir), "--n-bootstrap", "20"]) == 0
    assert "Grad-CAM mass inside the lungs: " in capsys.readouterr().out
    (out,) = (run / "evaluations").iterdir()
    result = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / "lung_mass.csv")
    assert result["lung_mass"]["n_matched"] == len(table) and result["lung_mass"]["n_no_mask"] == 1
    report = (out / "report.md").read_text()
    assert "## Where the model looks: Grad-CAM mass inside the lungs" in report and "lung_mass.png" in report
    assert (out / "figures" / "lung_mass.png").is_file()
    with pytest.raises(FileNotFoundError, match=r"folder of lung masks"):
        E.evaluate_run(run, lung_masks=tmp_path / "none", name="again")
    with pytest.raises(ValueError, match=r"own test part only, not with another dataset. Received: data_dir="):
        E.evaluate_run(run, lung_masks=masks_dir, data_dir=tmp_path, name="again")
    assert len(list((run / "evaluations").iterdir())) == 1  # nothing written by the refused ones


@pytest.mark.realdata
def test_real_snapshot_masks_are_found(real_data):
    from covidxr.data import load_dataset

    with pytest.warns(UserWarning):  # the snapshot lacks some listed images
        frame = load_dataset(real_data, task="covid-vs-rest")
    folder = real_data / "annotations" / "lungVAE-masks"
    masks = M.find_lung_masks(folder)
    table = M.match_masks(frame["image"], masks)
    stems = {re.sub(r"_mask(\.png)+$", "", n) for n in map(str, (p.name for p in folder.iterdir())) if "_mask" in n}
    expected = sum(image.rsplit("/", 1)[-1].rsplit(".", 1)[0] in stems for image in frame["image"])
    assert (table["status"] == "matched").sum() == expected == 192  # of the 527 frontal X-rays
    assert (table["status"] == "ambiguous").sum() == 0
    row = table[table["status"] == "matched"].iloc[0]
    image = np.asarray(Image.open(frame.set_index("image").at[row["image"], "path"]).convert("L"))
    with Image.open(row["mask"]) as mask:
        lungs = M.prepare_mask(mask, image_shape=image.shape, image_size=64)
    assert 0.1 < lungs.mean() < 0.7
