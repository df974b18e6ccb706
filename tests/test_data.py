"""Tests for covidxr.data: readers, label tasks, filters, splits."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from covidxr import data
from covidxr.data import readers


def _read(root, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.read_metadata(root, **kwargs)


# --------------------------------------------------------------------------- findings

@pytest.mark.parametrize("finding, category", [
    ("COVID-19", "covid"),
    ("COVID-19, ARDS", "covid"),
    ("Pneumonia/Viral/COVID-19", "covid"),
    (" covid-19 ", "covid"),
    ("No Finding", "normal"),
    ("Streptococcus", "other"),
    ("Pneumonia/Bacterial/Streptococcus", "other"),
    ("ARDS", "other"),
    ("Pneumonia", "other"),
    ("Lipoid", "other"),
    ("todo", None),
    ("", None),
    (np.nan, None),
    ("Unknown", None),
])
def test_finding_category(finding, category):
    assert data.finding_category(finding) == category


def test_flat_and_hierarchical_give_same_labels():
    pairs = [("COVID-19", "Pneumonia/Viral/COVID-19"), ("Streptococcus", "Pneumonia/Bacterial/Streptococcus"),
             ("SARS", "Pneumonia/Viral/SARS"), ("No Finding", "No Finding")]
    for task in data.TASKS.values():
        for flat, hier in pairs:
            a = task.mapping.get(data.finding_category(flat))
            b = task.mapping.get(data.finding_category(hier))
            assert a == b, (task.name, flat, hier)


def test_task_table():
    assert data.get_task("covid-vs-rest").classes == ("non-covid", "covid")
    assert data.get_task("covid-vs-normal").mapping == {"covid": "covid", "normal": "normal"}
    assert data.get_task("three-class").num_classes == 3
    with pytest.raises(ValueError, match=r"Unknown task.*covid-vs-rest.*Received: task='covid'"):
        data.get_task("covid")


# --------------------------------------------------------------------------- metadata layout

def test_read_metadata_counts_and_filters(collection):
    with pytest.warns(UserWarning, match=r"1 of \d+ metadata rows name an image that is not in"):
        frame = data.read_metadata(collection)
    meta = pd.read_csv(collection / "metadata.csv")
    # Independent count: frontal X-rays, labelled, with a file on disk.
    keep = meta[(meta.modality == "X-ray") & meta.view.isin(data.FRONTAL_VIEWS) & (meta.finding != "todo")]
    keep = keep[[(collection / "images" / f).is_file() for f in keep.filename]]
    assert len(frame) == len(keep)
    assert list(frame.columns) == list(data.FRAME_COLUMNS)
    assert frame.attrs["dropped_unlabelled"] == 1
    assert frame.attrs["missing_files"] == 1
    assert set(frame["view"]) <= set(data.FRONTAL_VIEWS)
    assert "lateral.png" not in set(frame["image"].str.split("/").str[-1])
    assert "ct.png" not in set(frame["image"].str.split("/").str[-1])
    assert all(os.path.isfile(p) for p in frame["path"])
    # Other filters bring the lateral and CT rows back.
    assert "images/lateral.png" in set(_read(collection, views="all")["image"])
    assert "images/ct.png" in set(_read(collection, views=None, modality=None)["image"])
    assert "images/ct.png" not in set(_read(collection, views=None)["image"])


@pytest.mark.parametrize("task", sorted(data.TASKS))
def test_read_metadata_tasks(collection, task):
    frame = _read(collection, task=task)
    spec = data.get_task(task)
    assert set(frame["label"]) == set(spec.classes)
    covid = frame["finding"].str.contains("COVID-19")
    assert (frame.loc[covid, "label"] == "covid").all()
    if task == "covid-vs-normal":
        assert set(frame["finding"]) <= {"COVID-19", "COVID-19, ARDS", "Pneumonia/Viral/COVID-19", "No Finding"}
    if task == "covid-vs-rest":
        assert (frame.loc[frame["finding"] == "No Finding", "label"] == "non-covid").all()


def test_unknown_view(collection):
    with pytest.raises(ValueError, match=r"Unknown view name.*Received: views='Lateral-ish'"):
        data.read_metadata(collection, views=["PA", "Lateral-ish"])


def test_missing_columns(tmp_path):
    (tmp_path / "images").mkdir()
    pd.DataFrame({"patientid": ["1"], "filename": ["a.png"]}).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['finding'\].*Received: missing=\['finding'\]"):
        data.read_metadata(tmp_path)


def test_missing_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metadata.csv.*Received: data_dir="):
        data.read_metadata(tmp_path)


@pytest.mark.parametrize("name, message", [
    ("../x.png", r"'\.\.' is not allowed.*Received: filename='\.\./x\.png'"),
    ("/etc/passwd", r"not an absolute path.*Received: filename='/etc/passwd'"),
])
def test_filename_outside_images(tmp_path, name, message):
    (tmp_path / "images").mkdir()
    pd.DataFrame({"patientid": ["1"], "finding": ["COVID-19"], "filename": [name], "view": ["PA"],
                  "modality": ["X-ray"]}).to_csv(tmp_path / "metadata.csv", index=False)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=message):
        data.read_metadata(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_symlink_outside_images(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "images" / "link.png").symlink_to(outside)
    pd.DataFrame({"patientid": ["1"], "finding": ["COVID-19"], "filename": ["link.png"], "view": ["PA"],
                  "modality": ["X-ray"]}).to_csv(root / "metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"resolves outside it.*Received: filename='link.png'"):
        data.read_metadata(root)


def test_empty_class_after_filtering(collection):
    with pytest.raises(ValueError, match=r"none are left for \['normal'\].*Received: class_counts="):
        _read(collection, task="covid-vs-normal", views=["AP Supine"]).pipe(lambda f: f[f.label != "normal"]).pipe(
            lambda f: readers.finish_frame(f.drop(columns="label"), "covid-vs-normal", dropped_unlabelled=0, source="x"))


def test_nothing_written_into_dataset(collection):
    before = {p: p.stat().st_mtime for p in collection.rglob("*")}
    frame = _read(collection, task="covid-vs-rest")
    data.split_patients(frame, val_size=0.2, test_size=0.2)
    after = {p: p.stat().st_mtime for p in collection.rglob("*")}
    assert before == after


# --------------------------------------------------------------------------- other layouts

def test_read_folders(class_folders):
    with pytest.warns(UserWarning, match="patient-level split is impossible"):
        frame = data.read_folders(class_folders, task="three-class")
    assert frame.groupby("label").size().to_dict() == {"covid": 8, "normal": 6, "other": 6}
    assert frame["patient"].nunique() == len(frame)
    assert list(frame.columns) == list(data.FRAME_COLUMNS)


def test_read_folders_unknown_name(tmp_path):
    (tmp_path / "tuberculosis").mkdir()
    with pytest.raises(ValueError, match=r"Unknown class folder name.*'covid'.*Received: folder='tuberculosis'"):
        data.read_folders(tmp_path)


def test_read_manifest(collection, tmp_path):
    meta = pd.read_csv(collection / "metadata.csv")
    meta = meta[meta.filename.map(lambda f: (collection / "images" / f).is_file())]
    # Manifests name classes by alias or hierarchical finding: map the flat findings first.
    alias = {"COVID-19": "COVID", "COVID-19, ARDS": "covid", "No Finding": "No Finding", "todo": "todo"}
    diagnosis = [alias.get(f, f if "/" in f else "pneumonia") for f in meta.finding]
    manifest = pd.DataFrame({"file": f"{collection.name}/images/" + meta.filename, "diagnosis": diagnosis,
                             "pid": meta.patientid.astype(str)})
    path = collection / ".." / "manifest_test.csv"
    path = path.resolve()
    manifest.to_csv(path, index=False)
    try:
        frame = data.read_manifest(path, task="covid-vs-rest", image_col="file", label_col="diagnosis",
                                   patient_col="pid")
    finally:
        path.unlink()
    # Same labels as the metadata reader for the same images (manifest has no view filter).
    ref = _read(collection, task="covid-vs-rest", views=None, modality=None).set_index("image")["label"]
    got = frame.set_index(frame["image"].str.split("/", n=1).str[1])["label"]
    assert got.equals(ref.loc[got.index])
    assert frame.attrs["dropped_unlabelled"] == 1  # the "todo" row


def test_read_manifest_errors(tmp_path):
    pd.DataFrame({"path": ["a.png"], "label": ["tuberculosis"]}).to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"Unknown label\(s\).*Received: labels=\['tuberculosis'\]"):
        data.read_manifest(tmp_path / "m.csv")
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['img'\]"):
        data.read_manifest(tmp_path / "m.csv", image_col="img")
    pd.DataFrame({"path": ["../a.png"], "label": ["covid"]}).to_csv(tmp_path / "m2.csv", index=False)
    with pytest.raises(ValueError, match=r"'\.\.' is not allowed.*Received: path='\.\./a\.png'"):
        data.read_manifest(tmp_path / "m2.csv")


def test_load_dataset_detects_layout(collection, class_folders, tmp_path):
    assert data.load_dataset(collection).attrs["source"] == "metadata"
    with pytest.warns(UserWarning):
        assert data.load_dataset(class_folders).attrs["source"] == "folders"
    with pytest.raises(FileNotFoundError, match=r"Received: data_dir="):
        data.load_dataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"Unknown layout.*Received: layout='zip'"):
        data.load_dataset(collection, layout="zip")


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("COVIDXR_DATA_DIR", raising=False)
    assert data.resolve_data_dir() == data.DEFAULT_DATA_DIR
    monkeypatch.setenv("COVIDXR_DATA_DIR", str(tmp_path))
    assert data.resolve_data_dir() == tmp_path
    assert data.resolve_data_dir(tmp_path / "x") == tmp_path / "x"


@pytest.mark.parametrize("value", ["", " ", "All", "NONE", "none", None])
def test_none_if_blank(value):
    assert data.none_if_blank(value) is None


def test_none_if_blank_keeps_other_values():
    assert data.none_if_blank("X-ray") == "X-ray"
    assert data.none_if_blank("patient") == "patient"


def test_views_key():
    assert data.views_key("frontal") == data.views_key("PA,AP,AP Supine,AP Erect") == "PA,AP,AP Supine,AP Erect"
    assert data.views_key(data.FRONTAL_VIEWS) == data.views_key(" pa , frontal ") == data.views_key("frontal")
    assert data.views_key("all") == data.views_key(None) == data.views_key(["PA", "all"]) == "all"
    assert data.views_key("L") == "L" != data.views_key("frontal")
    assert data.parse_views("frontal") == data.FRONTAL_VIEWS and data.parse_views("ALL") is None
    with pytest.raises(ValueError, match=r"Unknown view name.*Received: views='side'"):
        data.views_key("side")


def test_load_dataset_blank_modality_and_patient_col(collection, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blank = data.load_dataset(collection, views="all", modality="", patient_col="none")
        ref = data.load_dataset(collection, views="all", modality=None, patient_col=None)
    pd.testing.assert_frame_equal(blank, ref)
    assert blank.attrs == ref.attrs
    assert "images/ct.png" in set(blank["image"])          # no modality filter: the CT row is kept
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    pd.DataFrame({"path": ["a.png", "b.png"], "label": ["covid", "normal"]}).to_csv(tmp_path / "m.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # "none": no patient column, so no warning
        blank = data.load_dataset(tmp_path / "m.csv", task=None, patient_col="none")
    pd.testing.assert_frame_equal(blank, data.load_dataset(tmp_path / "m.csv", task=None, patient_col=None))
    with pytest.warns(UserWarning, match=r"has no 'patient' column"):
        data.load_dataset(tmp_path / "m.csv", task=None)


def test_metadata_warnings_name_the_caller(collection):
    with pytest.warns(UserWarning) as record:
        data.read_metadata(collection)
    mine = [w for w in record if "metadata rows name an image" in str(w.message)]
    assert len(mine) == 1 and os.path.basename(mine[0].filename) == "test_data.py"


# --------------------------------------------------------------------------- blank ids, unknown views

def _small_collection(root, rows):
    """A metadata collection of tiny images: ``rows`` of (patientid, finding, view)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    meta = []
    for i, (patient, finding, view) in enumerate(rows):
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(root / "images" / f"i{i}.png")
        meta.append({"patientid": patient, "finding": finding, "view": view, "modality": "X-ray",
                     "filename": f"i{i}.png", "url": "https://a.example.org/x"})
    pd.DataFrame(meta).to_csv(root / "metadata.csv", index=False)
    return root


def test_blank_patient_ids_in_metadata_become_one_patient_per_image(tmp_path):
    root = _small_collection(tmp_path / "c", [("1", "COVID-19", "PA"), ("", "COVID-19", "PA"), ("  ", "No Finding", "AP"),
                                              ("", "No Finding", "PA"), ("2", "No Finding", "PA")])
    with pytest.warns(UserWarning, match=r"3 of 5 rows of .*metadata.csv have a blank patient id: each such image is "
                                         r"treated as its own patient, so leakage between split parts is likely"):
        frame = data.read_metadata(root, task=None)
    assert list(frame["patient"]) == ["1", "image:images/i1.png", "image:images/i2.png", "image:images/i3.png", "2"]
    assert frame.attrs["blank_patient_ids"] == 3
    with pytest.warns(UserWarning, match=r"^2 of 4 rows"):  # counted after the filters
        assert data.read_metadata(root, task=None, views="PA").attrs["blank_patient_ids"] == 2


def test_blank_patient_ids_in_a_manifest(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"")
    pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": ["covid", "normal", "covid"],
                  "patient": ["p1", "", " "]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.warns(UserWarning, match=r"^data: 2 rows without a patient id \(each image its own patient\)$"):
        frame = data.load_dataset(tmp_path / "m.csv", task=None)   # one line; in full in the frame:
    assert re.match(r"2 of 3 rows of .*m.csv have a blank patient id: each such image is treated as its own patient",
                    frame.attrs["data_warnings"][0])
    assert list(frame["patient"]) == ["p1", "image:b.png", "image:c.png"] and frame.attrs["blank_patient_ids"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = pd.DataFrame({"path": ["a.png", "b.png"], "label": ["covid", "normal"], "patient": ["p1", "p2"]})
        full.to_csv(tmp_path / "m2.csv", index=False)
        assert list(data.load_dataset(tmp_path / "m2.csv", task=None)["patient"]) == ["p1", "p2"]


def test_parse_views_unknown_token():
    assert data.parse_views("frontal,unknown") == (*data.FRONTAL_VIEWS, "unknown")
    assert data.parse_views(["Unknown", "PA"]) == ("unknown", "PA")
    assert data.views_key("frontal,UNKNOWN") == "PA,AP,AP Supine,AP Erect,unknown" != data.views_key("frontal")
    with pytest.raises(ValueError, match=r"Expected any of .*'frontal', 'unknown' or 'all'. Received: views='blank'"):
        data.parse_views("PA,blank")


def test_rows_without_a_view_are_counted_and_kept_with_unknown(tmp_path):
    root = _small_collection(tmp_path / "c", [("1", "COVID-19", "PA"), ("2", "COVID-19", ""), ("3", "No Finding", ""),
                                              ("4", "todo", ""), ("5", "No Finding", "L"), ("6", "No Finding", "AP")])
    with pytest.warns(UserWarning, match=r"^2 rows have no view and are left out by the view filter; add 'unknown' to "
                                         r"--views to keep them \(views=PA,AP,AP Supine,AP Erect\)"):
        frame = data.read_metadata(root, task=None)
    assert list(frame["patient"]) == ["1", "6"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = data.read_metadata(root, task=None, views="frontal,unknown")
        assert list(kept["patient"]) == ["1", "2", "3", "6"] and kept["view"].isna().sum() == 2
        assert list(data.read_metadata(root, task=None, views="unknown")["patient"]) == ["2", "3"]
        assert list(data.load_dataset(root, task=None, views="all")["patient"]) == ["1", "2", "3", "5", "6"]
    with pytest.warns(UserWarning, match=r"^data: 2 rows without a view \(left out\)$"):
        assert list(data.load_dataset(root, task=None, views="L")["patient"]) == ["5"]


# --------------------------------------------------------------------------- summaries

def test_summary_table_lists_merged_groups_and_mixed_patients():
    frame = pd.DataFrame({
        "image": [f"i{i}.png" for i in range(7)], "patient": ["1", "2", "2", "3", "3", "4", "5"],
        "category": ["covid", "covid", "covid", "covid", "normal", "normal", "other"],
        "source": "a.org", "group": ["1+2", "1+2", "1+2", "3", "3", "4", "5"],
    })
    frame["label"] = frame["category"]
    frame.attrs.update(dropped_unlabelled=0, missing_files=0, duplicates={
        "pairs": {"exact": 1, "near": 0}, "cross_patient_pairs": 1, "dropped": 0, "mode": "merge", "max_distance": 24})
    text = data.summary_table(frame)
    assert "duplicates: 1 exact and 0 near pairs of images (at most 24 of 256" in text
    assert "1 split groups hold more than one patient (3 images); the largest is 1+2 (2 patients, 3 images):" in text
    assert "1 of 5 patients have images of more than one label (1 of 3 covid, 1 of 2 normal, 0 of 1 other patients)" \
        in text
    assert "merged split groups hold images of more than one label" not in text
    conflict = frame.assign(category=["covid", "normal", "normal", "covid", "normal", "normal", "other"])
    conflict["label"] = conflict["category"]
    assert "1 merged split groups hold images of more than one label (the same image labelled differently?): " \
        "['1+2']" in data.summary_table(conflict)
    rows = [line.split() for line in text.splitlines()]
    assert ["1+2", "2", "3", "1,", "2"] in rows and ["3", "3", "covid:", "1,", "normal:", "1", "2"] in rows
    no_attrs = frame.copy()
    no_attrs.attrs = {}
    assert "duplicates:" not in data.summary_table(no_attrs) and "the largest is 1+2" in data.summary_table(no_attrs)
    # a frame without groups (download's summary): no group lines; no mixed patients: no mixed lines
    plain = frame.drop(columns="group")
    plain.attrs = {}
    assert "split groups" not in data.summary_table(plain) and "more than one label" in data.summary_table(plain)
    single = plain[plain["patient"] != "3"]
    assert "more than one label" not in data.summary_table(single)
    dropped = single.copy()
    dropped.attrs["mixed_dropped"] = ["3"]
    assert "1 patients with images of more than one label were left out (--drop-mixed-patients): ['3']" \
        in data.summary_table(dropped)


# --------------------------------------------------------------------------- splits

def _assert_patient_disjoint(split):
    parts_per_patient = split.groupby("patient")["part"].nunique()
    assert parts_per_patient.max() == 1


@pytest.mark.parametrize("task", sorted(data.TASKS))
def test_split_patients(collection, task):
    frame = _read(collection, task=task)
    split = data.split_patients(frame, val_size=0.2, test_size=0.2, seed=3, allow_small_validation=True)
    _assert_patient_disjoint(split)
    assert set(split["part"]) == {"train", "val", "test"}
    for _, part in split.groupby("part"):
        assert set(part["label"]) == set(frame["label"])
    again = data.split_patients(frame, val_size=0.2, test_size=0.2, seed=3, allow_small_validation=True)
    assert split["part"].equals(again["part"])
    other = data.split_patients(frame, val_size=0.2, test_size=0.2, seed=4, allow_small_validation=True)
    assert not split["part"].equals(other["part"])


def test_kfold_split(collection):
    frame = _read(collection, task="covid-vs-rest")
    tests = []
    for fold in range(3):
        split = data.kfold_split(frame, folds=3, fold=fold, val_size=0.2, seed=0, allow_small_validation=True)
        _assert_patient_disjoint(split)
        tests.append(set(split.loc[split.part == "test", "patient"]))
    assert not (tests[0] & tests[1]) and not (tests[1] & tests[2]) and not (tests[0] & tests[2])
    assert set().union(*tests) == set(frame["patient"])


def test_split_errors(collection):
    frame = _read(collection, task="covid-vs-normal")
    few = frame[frame["patient"].isin(frame.groupby("label")["patient"].first())]
    with pytest.raises(ValueError, match=r"Too few groups.*at least 3 groups.*Received: groups_per_class="):
        data.split_patients(few)
    with pytest.raises(ValueError, match=r"Too few groups .* for 50 folds.*Received: groups_per_class="):
        data.kfold_split(frame, folds=50)
    with pytest.raises(ValueError, match=r"Expected test_size in \(0, 0.5\). Received: test_size=0.7"):
        data.split_patients(frame, test_size=0.7)
    with pytest.raises(ValueError, match=r"Expected 0 <= fold < folds=3. Received: fold=3"):
        data.kfold_split(frame, folds=3, fold=3)


def test_split_roundtrip(collection, tmp_path):
    split = data.split_patients(_read(collection, task="three-class"), val_size=0.2, test_size=0.2,
                                allow_small_validation=True)
    path = data.write_split(split, tmp_path / "split.csv")
    back = data.read_split(path)
    assert list(back.columns) == ["image", "patient", "group", "hash", "label", "part"]
    want = split.assign(group=split["patient"], hash="")[list(data.SPLIT_COLUMNS)].astype(str)
    pd.testing.assert_frame_equal(back, want)
    back.assign(part="holdout").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"Expected parts train/val/test.*Received: part=\['holdout'\]"):
        data.read_split(tmp_path / "bad.csv")


def test_source_overlap():
    frame = pd.DataFrame({"category": ["covid"] * 4 + ["other"] * 4,
                          "source": ["a", "a", "a", "b", "b", "b", "c", "a"]})
    overlap = data.source_overlap(frame)
    assert overlap["leaning_sources"] == ["b", "c"]
    assert overlap["non_covid_from_leaning"] == 3
    assert overlap["covid_from_leaning"] == 1


# --------------------------------------------------------------------------- real snapshot

@pytest.mark.realdata
def test_real_snapshot_counts_and_split(real_data):
    with pytest.warns(UserWarning) as record:
        frame = data.read_metadata(real_data, task=None)
    messages = " ".join(str(w.message) for w in record)
    assert "metadata rows name an image that is not in" in messages
    assert "4 metadata rows list an image already listed" in messages  # 000001-24.jpg under patients 285 and 339
    meta = pd.read_csv(real_data / "metadata.csv")
    on_disk = meta[[(real_data / (f or "images") / n).is_file() for f, n in zip(meta.folder.fillna("images"), meta.filename)]]
    assert len(on_disk) == 716 and (on_disk.modality == "X-ray").sum() == 653  # figures of shared/data/README.md
    frontal = on_disk[(on_disk.modality == "X-ray") & on_disk.view.isin(data.FRONTAL_VIEWS)]
    labelled = frontal[~frontal.finding.isin(["todo"]) & frontal.finding.notna()].drop_duplicates("filename")
    assert len(frame) == len(labelled)
    assert frame["patient"].nunique() == labelled.patientid.nunique()
    normal = data.get_task("covid-vs-normal")
    counts = data.task_counts(frame).set_index(["task", "class"])
    assert counts.loc[("covid-vs-normal", "normal"), "patients"] == 16
    assert counts.loc[("covid-vs-rest", "covid"), "images"] == labelled.finding.str.contains("COVID-19").sum()
    assert normal.classes == ("normal", "covid")
    split = data.split_patients(data.read_metadata(real_data, task="covid-vs-rest"), seed=0)
    _assert_patient_disjoint(split)
