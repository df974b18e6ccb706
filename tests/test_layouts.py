"""Tests for covidxr.data.layouts (COVIDx, COVID-QU-Ex), the official split, the folders layout's
missing sources and the metadata.csv hint: small synthetic trees in exactly the published formats."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxr import cli, data
from covidxr.config import TrainConfig, check_config, check_data_dir, make_split
from covidxr.data import layouts
from covidxr.images import load_grouped

_RNG = np.random.default_rng(7)
CLASSES_A = {"COVID-19": "covid", "pneumonia": "other", "normal": "normal"}


def _image(path, *, jpeg=False):
    """A 24 × 24 grey noise image (distinct content, so no two images merge as duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = _RNG.integers(0, 256, size=(24, 24), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path, format="JPEG" if jpeg else "PNG")


def _covidx(root, *, suffix="", labels=tuple(CLASSES_A), per_class=(6, 2), source=True):
    """A COVIDx tree: ``train{suffix}.txt``/``test{suffix}.txt`` listing ``patient file label [source]``, the images
    in ``train/`` and ``test/``; ``per_class`` patients per class in (train, test), 1–2 images each."""
    for part, n in zip(("train", "test"), per_class):
        lines = []
        for label in labels:
            for k in range(n):
                pid = f"{part[:2]}{label[:3]}{k}"
                for j in range(1 + k % 2):
                    name = f"{pid}-{j}.{'jpg' if j else 'png'}"
                    _image(root / part / name, jpeg=bool(j))
                    lines.append(f"{pid} {name} {label}" + (f" src{k % 3}" if source else ""))
        (root / f"{part}{suffix}.txt").write_text("\n".join(lines) + "\n")
    return root


def _qu_ex(root, *, per_class=(4, 3, 3), missing_mask=None):
    """A COVID-QU-Ex tree: ``{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/images`` and ``lung masks``."""
    for part, n in zip(("Train", "Val", "Test"), per_class):
        for label in ("COVID-19", "Non-COVID", "Normal"):
            for k in range(n):
                name = f"{label.lower()}_{part.lower()}_{k}.png"
                _image(root / part / label / "images" / name)
                if f"{part}/{label}/{name}" != missing_mask:
                    _image(root / part / label / "lung masks" / name)
    return root


@pytest.fixture(scope="module")
def covidx(tmp_path_factory):
    return _covidx(tmp_path_factory.mktemp("covidx"))


@pytest.fixture(scope="module")
def qu_ex(tmp_path_factory):
    return _qu_ex(tmp_path_factory.mktemp("qu_ex"), missing_mask="Train/Normal/normal_train_0.png")


# --------------------------------------------------------------------------- COVIDx

def test_covidx_reads_lists(covidx):
    assert data.detect_layout(covidx) == (covidx, "covidx")
    frame = data.load_dataset(covidx, task="three-class")
    assert frame.attrs["source"] == "covidx" and list(frame.columns) == [*data.FRAME_COLUMNS, "official_part"]
    train = (covidx / "train.txt").read_text().split("\n")
    assert len(frame) == sum(1 for line in train if line) + 3 * (1 + 2)  # test: 2 patients, 1 + 2 images each
    row = frame.set_index("image").loc["train/trCOV1-1.jpg"]
    assert (row["patient"], row["source"], row["finding"], row["label"], row["official_part"]) == \
        ("src1/trCOV1", "src1", "COVID-19", "covid", "train")
    counts = frame.groupby(["official_part", "label"]).size().to_dict()
    assert counts[("train", "other")] == 9 and counts[("test", "normal")] == 3
    assert (data.load_dataset(covidx, task="covid-vs-rest")["label"] == "non-covid").sum() == 24


def test_covidx_versions_binary_labels_and_old_lists(tmp_path):
    root = _covidx(tmp_path / "v", suffix="_COVIDx8A")
    _covidx(root, suffix="_COVIDx8B", labels=("positive", "negative"))
    with pytest.raises(ValueError, match=r"one COVIDx version.*it holds several.*Received: train_lists="
                                         r"\['train_COVIDx8A.txt', 'train_COVIDx8B.txt'\]"):
        data.load_dataset(root)
    binary = data.load_dataset(root / "train_COVIDx8B.txt", task="covid-vs-rest")  # the list file chooses
    assert binary.groupby("label").size().to_dict() == {"covid": 12, "non-covid": 12}
    assert set(binary["finding"]) == {"positive", "negative"}  # "negative" is not "normal" here
    with pytest.raises(ValueError, match=r"positive / negative only \(no normal class\).*Received: task='three-class'"):
        data.load_dataset(root / "train_COVIDx8B.txt", task="three-class")
    old = _covidx(tmp_path / "old", source=False)  # older lists (e.g. COVIDx7A): no source column
    frame = data.load_dataset(old, task=None)
    assert frame["source"].isna().all() and frame["patient"].str.startswith(("trCOV", "tepne", "trnor", "tenor",
                                                                              "trpne", "teCOV")).all()


def test_covidx_missing_files_and_bad_lines(tmp_path):
    root = _covidx(tmp_path / "c")
    (root / "train" / "trnor0-0.png").unlink()
    with pytest.warns(UserWarning, match=r"^data: 1 rows name a missing image \(skipped\)$"):
        frame = data.load_dataset(root, task=None)
    assert re.match(r"1 of \d+ rows of train.txt, test.txt name an image that is not there; "
                    r"skipped: \['train/trnor0-0.png'\]", frame.attrs["data_warnings"][0])
    assert "train/trnor0-0.png" not in set(frame["image"])
    (root / "test.txt").write_text("p1 a.png tuberculosis src\n")
    with pytest.raises(ValueError, match=r"patient_id filename label \[source\]'.*at test.txt:1. "
                                         r"Received: line='p1 a.png tuberculosis src'"):
        data.load_dataset(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.txt").write_text("p1 a.png positive src\n")
    with pytest.warns(UserWarning, match="name a missing image"), \
            pytest.raises(ValueError, match=r"Expected the images of train.txt.*none of them is there"):
        data.load_dataset(empty, layout="covidx")
    with pytest.raises(ValueError, match=r"Expected a COVIDx train list.*Received: data_dir="):
        data.load_dataset(tmp_path, layout="covidx")
    (tmp_path / "labels.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match=r"Expected a COVIDx list file .*Received: data_dir='.*labels.csv'"):
        data.load_dataset(tmp_path / "labels.csv", layout="covidx")


def test_official_split_covidx(covidx, tmp_path):
    frame = load_grouped(covidx, task="three-class", cache_dir=tmp_path / "cache")
    split = data.split_frame(frame, official=True, val_size=0.34, seed=3)
    test = split[split["part"] == "test"]
    assert set(test["image"]) == set(frame.loc[frame["official_part"] == "test", "image"])
    val = split[split["part"] == "val"]
    assert set(val["official_part"]) == {"train"} and val.groupby("label")["patient"].nunique().min() == 2
    assert split.groupby("group")["part"].nunique().max() == 1
    assert split.attrs["split_sizes"]["requested"] == {"official": True, "val": 0.34}
    again = data.split_frame(frame, official=True, val_size=0.34, seed=3)
    assert again["part"].tolist() == split["part"].tolist()
    with pytest.raises(ValueError, match=r"Expected no folds with the official split.*Received: folds=3"):
        data.split_frame(frame, official=True, folds=3)


def test_official_split_drops_training_rows_of_test_patients(covidx, tmp_path):
    frame = load_grouped(covidx, task="three-class", cache_dir=tmp_path / "cache")
    test_patient = frame.loc[frame["official_part"] == "test", "patient"].iloc[0]
    moved = frame.index[(frame["official_part"] == "train")][:1]
    frame.loc[moved, ["patient", "group"]] = test_patient  # a patient listed in train and test
    with pytest.warns(UserWarning, match=r"1 images of the official training or validation part belong to a group"):
        split = data.split_frame(frame, official=True, val_size=0.34)
    assert frame.loc[moved[0], "image"] not in set(split["image"])
    assert (split.loc[split["patient"] == test_patient, "part"] == "test").all()


def test_official_split_errors():
    frame = pd.DataFrame({"image": [f"i{k}" for k in range(8)], "patient": [f"p{k}" for k in range(8)],
                          "label": ["a", "b"] * 4, "official_part": ["train"] * 8})
    with pytest.raises(ValueError, match=r"Expected an official test part.*Received: parts=\['train'\]"):
        data.official_split(frame)
    with pytest.raises(ValueError, match=r"Expected official parts train/val/test.*Received: parts=\['dev'\]"):
        data.official_split(frame.assign(official_part=["train"] * 6 + ["dev", "test"]))
    with pytest.raises(ValueError, match=r"Expected official parts train/val/test.*Received: parts=\['<blank>'\]"):
        data.official_split(frame.assign(official_part=["train"] * 6 + [None, "test"]))
    with pytest.raises(ValueError, match=r"Expected val_size in \(0, 0.5\). Received: val_size=0.6"):
        data.official_split(frame, val_size=0.6)
    few = frame.assign(official_part=["train"] * 3 + ["test"] * 5)  # class b: 1 training patient
    with pytest.raises(ValueError, match=r"Too few groups.*for a validation part drawn from the official training"):
        data.official_split(few)
    with pytest.raises(ValueError, match=r"Unknown layout. Expected one of .*Received: layout='dicomdir'"):
        data.readers.register_layout("dicomdir", detect=bool, read=print)


def test_official_split_refused_without_one(collection, class_folders, tmp_path):
    frame = load_grouped(collection, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"Expected a dataset with its own split.*the metadata layout has none"):
        data.split_frame(frame, official=True)
    config = TrainConfig(data_dir=str(class_folders), official_split=True)
    with pytest.raises(ValueError, match=r"Expected a layout with its own split \(covidx, covid-qu-ex\).*"
                                         r"Received: layout='folders'"):
        check_data_dir(config)
    with pytest.raises(ValueError, match=r"Expected neither folds nor split_file with official_split.*folds=3"):
        check_config(TrainConfig(official_split=True, folds=3, weights="none"))
    with pytest.raises(ValueError, match=r"Expected official_split to be True or False.*official_split='yes'"):
        check_config(TrainConfig(official_split="yes", weights="none"))


# --------------------------------------------------------------------------- COVID-QU-Ex

def test_covid_qu_ex_reads_tree_and_masks(qu_ex):
    assert data.detect_layout(qu_ex) == (qu_ex, "covid-qu-ex")
    with pytest.warns(UserWarning) as caught:
        frame = data.load_dataset(qu_ex, task="three-class")
    messages = " | ".join(d for w in caught for d in getattr(w.message, "details", [str(w.message)]))
    assert "1 of 30 images" in messages and "have no lung mask" in messages
    assert "30 of 30 rows" in messages and "leakage between split parts is likely" in messages
    assert list(frame.columns) == [*data.FRAME_COLUMNS, "official_part", "mask"]
    assert frame.groupby("official_part").size().to_dict() == {"test": 9, "train": 12, "val": 9}
    row = frame.set_index("image").loc["Val/Non-COVID/images/non-covid_val_2.png"]
    assert row["label"] == "other" and row["patient"] == "image:Val/Non-COVID/images/non-covid_val_2.png"
    assert row["mask"].endswith("Val/Non-COVID/lung masks/non-covid_val_2.png")
    assert frame["source"].isna().all()


def test_covid_qu_ex_official_split_uses_val_folder(qu_ex, tmp_path):
    with pytest.warns(UserWarning):
        frame = load_grouped(qu_ex, task="covid-vs-rest", cache_dir=tmp_path / "cache")
        with pytest.raises(ValueError, match=r"Expected image sources for group_by='source'.*the covid-qu-ex layout "
                                             r"records none.*Received: group_by='source', layout='covid-qu-ex'"):
            load_grouped(qu_ex, task="covid-vs-rest", group_by="source", cache_dir=tmp_path / "cache")
    split = make_split(TrainConfig(official_split=True), frame)
    assert (split["part"] == split["official_part"]).all()
    assert split.attrs["split_sizes"]["requested"] == {"official": True, "val": "official"}


def test_covid_qu_ex_errors(tmp_path):
    nested = tmp_path / "Lung Segmentation Data"
    (nested / "Train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"Expected images in \{Train,Val,Test\}/<class>/images.*point at"):
        data.load_dataset(nested, layout="covid-qu-ex")
    _image(tmp_path / "q" / "Train" / "Tuberculosis" / "images" / "a.png")
    with pytest.raises(ValueError, match=r"Unknown class folder name.*Received: folder='Train/Tuberculosis'"):
        data.load_dataset(tmp_path / "q")
    with pytest.raises(FileNotFoundError, match=r"Expected a COVID-QU-Ex folder"):
        data.load_dataset(tmp_path / "nothing", layout="covid-qu-ex")


# --------------------------------------------------------------------------- folders sources, metadata.csv hint

def test_folders_layout_has_no_sources(class_folders, tmp_path):
    with pytest.warns(UserWarning, match="no patient ids"):
        frame = data.load_dataset(class_folders, task=None)
    assert frame["source"].isna().all()  # was the class folder: source and label coincided
    with pytest.warns(UserWarning, match="no patient ids"), \
            pytest.raises(ValueError, match=r"Expected image sources for group_by='source'.*the folders layout records "
                                            r"none: use group_by='patient'"):
        load_grouped(class_folders, group_by="source", cache_dir=tmp_path / "cache")


def test_metadata_csv_as_data_dir_gets_a_hint(collection):
    with pytest.raises(ValueError, match=r"not its metadata.csv: pass --data-dir '.*collection\w*'"):
        data.load_dataset(collection / "metadata.csv")
    with pytest.raises(ValueError, match=r"metadata.csv, not a manifest: pass its folder as --data-dir"):
        data.load_dataset(collection / "metadata.csv", layout="manifest")


def test_cli_one_line_errors_and_official_split(covidx, class_folders, collection, tmp_path, capsys):
    assert cli.main(["eda", "--data-dir", str(class_folders), "--group-by", "source",
                     "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("covidxr eda: error: Expected image sources for group_by='source'")
    assert cli.main(["eda", "--data-dir", str(class_folders), "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "records no image sources" in out and "sources that supply only" not in out
    assert cli.main(["eda", "--data-dir", str(collection / "metadata.csv")]) == 2
    assert "not its metadata.csv" in capsys.readouterr().err
    out = tmp_path / "split.csv"
    assert cli.main(["split", "--data-dir", str(covidx), "--official-split", "--val-size", "0.34",
                     "--task", "three-class", "--out", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    split = pd.read_csv(out)
    assert (split["part"] == "test").sum() == 9 and "official" in capsys.readouterr().out


def test_grid_and_train_follow_official_split(covidx, tmp_path):
    from covidxr import grid

    base = TrainConfig(data_dir=str(covidx), task="three-class", official_split=True, weights="none", image_size=32,
                       batch_size=8, epochs=1, fine_tune_epochs=0, val_size=0.34, cache_dir=str(tmp_path / "c"),
                       verbose=0)
    with pytest.raises(ValueError, match=r"Expected no folds with official_split.*Received: folds=3"):
        grid.run_grid(base, out=tmp_path / "g0", backbones="vgg16", strategies="none", folds=3)
    out = grid.run_grid(base, out=tmp_path / "g", backbones="vgg16", strategies="none", n_bootstrap=5, progress=False)
    record = json.loads((out / "grid.json").read_text())
    assert record["folds"] == 1 and record["options"]["official_split"] is True and len(record["runs"]) == 1
    run = out / "runs" / record["runs"][0]
    config = json.loads((run / "config.json").read_text())
    assert config["official_split"] is True and config["folds"] is None
    split = pd.read_csv(run / "split.csv")
    listed = {f"test/{line.split()[1]}" for line in (covidx / "test.txt").read_text().splitlines() if line}
    assert set(split.loc[split["part"] == "test", "image"]) == listed


def test_cli_train_and_grid_take_official_split(covidx, class_folders, tmp_path, monkeypatch, capsys):
    from covidxr import grid

    seen = {}
    monkeypatch.setattr(grid, "run_grid", lambda base, **kwargs: seen.update(kwargs, base=base) or tmp_path)
    assert cli.main(["grid", "--data-dir", str(covidx), "--official-split", "--out", str(tmp_path / "g"),
                     "--weights", "none"]) == 0
    assert seen["base"].official_split is True and seen["folds"] is None
    assert cli.main(["train", "--data-dir", str(covidx), "--official-split", "--folds", "3", "--weights", "none",
                     "--runs-dir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "covidxr train: error: Expected neither folds nor split_file with official_split")
    assert cli.main(["train", "--data-dir", str(class_folders), "--official-split", "--weights", "none",
                     "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "Expected a layout with its own split (covidx, covid-qu-ex)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
