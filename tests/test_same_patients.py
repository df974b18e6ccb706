"""Tests for covidxr.data.same_patients: the confirmed same-patients file (reading, checks, the shipped
file of the 2020 snapshot), its merging into one split group in the split, the folds and the
bootstrap, the candidate pairs ``covidxr eda`` lists for review, and the command-line options."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from covidxr import cli, data
from covidxr.config import TrainConfig, check_config
from covidxr.data import groups
from covidxr.data import same_patients as S
from covidxr.evaluation.bootstrap import patient_bootstrap


def _write(path, rows, columns=("patient_a", "patient_b", "reason")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def _frame(n_patients=12, images=2, seed=0):
    """A grouped-ready frame of ``n_patients`` patients (half covid) and random, distinct hashes."""
    rng = np.random.default_rng(seed)
    rows, hashes = [], []
    for p in range(n_patients):
        for i in range(images):
            rows.append({"image": f"p{p}_{i}.png", "patient": f"P{p}", "label": "covid" if p % 2 else "non-covid",
                         "category": "covid" if p % 2 else "other", "source": f"s{p % 3}"})
            hashes.append({"exact": f"x{p}_{i}", "near": np.packbits(rng.integers(0, 2, 256).astype(np.uint8))
                           .tobytes().hex(), "std": 40.0})
    return pd.DataFrame(rows), pd.DataFrame(hashes)


# --------------------------------------------------------------------------- the file

def test_read_same_patients_and_its_errors(tmp_path):
    table = S.read_same_patients(_write(tmp_path / "ok.csv", [[" 1 ", "2", "one film"]]))
    assert table[["patient_a", "patient_b"]].values.tolist() == [["1", "2"]] and len(table.attrs["sha256"]) == 64
    with pytest.raises(FileNotFoundError, match=r"Expected a same-patients CSV file with the columns patient_a, "
                                                r"patient_b, reason\. Received: same_patients='.*gone.csv'"):
        S.read_same_patients(tmp_path / "gone.csv")
    with pytest.raises(ValueError, match=r"Expected the columns patient_a, patient_b, reason.*\['reason'\] are "
                                         r"missing\. Received: columns=\['patient_a', 'patient_b'\]"):
        S.read_same_patients(_write(tmp_path / "cols.csv", [["1", "2"]], columns=("patient_a", "patient_b")))
    with pytest.raises(ValueError, match=r"1 rows have a blank one\. Received: rows=\[3\]"):
        S.read_same_patients(_write(tmp_path / "blank.csv", [["1", "2", "x"], ["3", "4", " "]]))
    with pytest.raises(ValueError, match=r"Expected two different patient ids per row.*Received: rows=\[2\]"):
        S.read_same_patients(_write(tmp_path / "self.csv", [["1", "1", "x"]]))


def test_resolve_lists_unknown_ids_and_honours_none(collection, tmp_path):
    path = _write(tmp_path / "pairs.csv", [["100", "101", "x"], ["100", "nobody", "y"], ["ghost", "101", "z"]])
    with pytest.raises(ValueError, match=r"Expected every patient id of the same-patients file .*pairs.csv in the "
                                         r"dataset .*; 2 are not\. Received: unknown=\['nobody', 'ghost'\]"):
        S.resolve_same_patients(str(path), data_dir=collection)
    assert S.resolve_same_patients("none", data_dir=collection) == (None, {"option": "none", "file": None,
                                                                           "shipped": False, "sha256": None,
                                                                           "pairs": 0})
    # the synthetic collection is not the 2020 snapshot: auto finds no file
    assert S.resolve_same_patients("auto", data_dir=collection)[0] is None
    # ids are checked against metadata.csv, not the filtered frame: 901 is a lateral, 900 unlabelled
    pairs, record = S.resolve_same_patients(str(_write(tmp_path / "f.csv", [["900", "901", "x"]])), data_dir=collection)
    assert len(pairs) == 1 and record["pairs"] == 1 and record["file"].endswith("f.csv")


def test_shipped_file_is_recognised_by_its_rows(tmp_path):
    """The 2020 snapshot is recognised by the rows of its confirmed pairs in metadata.csv; one row
    missing (another collection) and the shipped file is not used."""
    shipped = S.SHIPPED_DIR / "covid-chestxray-dataset-2020.csv"
    table = pd.read_csv(shipped, dtype=str)
    assert list(table.columns[:3]) == list(S.SAME_PATIENT_COLUMNS) and len(table) >= 1
    review = pd.read_csv(S.SHIPPED_DIR / ("covid-chestxray-dataset-2020" + S.REVIEW_SUFFIX), dtype=str)
    assert set(review["decision"]) == {"merge", "keep apart"} and review["reason"].str.len().min() > 20
    merged = review[review["decision"] == "merge"]
    assert set(zip(merged["patient_a"], merged["patient_b"])) == set(zip(table["patient_a"], table["patient_b"]))
    rows = [{"patientid": r.patient_a, "filename": r.image_a.split("/")[-1]} for r in table.itertuples()] \
        + [{"patientid": r.patient_b, "filename": r.image_b.split("/")[-1]} for r in table.itertuples()]
    (tmp_path / "a").mkdir()
    pd.DataFrame(rows + [{"patientid": "7", "filename": "x.png"}]).to_csv(tmp_path / "a" / "metadata.csv", index=False)
    assert S.recognised_file(tmp_path / "a") == shipped
    (tmp_path / "b").mkdir()
    pd.DataFrame(rows[1:]).to_csv(tmp_path / "b" / "metadata.csv", index=False)
    assert S.recognised_file(tmp_path / "b") is None and S.recognised_file(tmp_path / "nothing") is None


# --------------------------------------------------------------------------- merging

@pytest.mark.parametrize("duplicates", ["merge", "drop", "keep"])
def test_pairs_join_one_group_whatever_duplicates(duplicates):
    frame, hashes = _frame()
    same = pd.DataFrame({"patient_a": ["P1", "P3", "P99"], "patient_b": ["P2", "P2", "P1"]})
    out = groups.assign_groups(frame, hashes, duplicates=duplicates, same_patients=same)
    by = out.groupby("patient")["group"].first()
    assert by["P1"] == by["P2"] == by["P3"] == "P1+P2+P3" and by["P4"] == "P4"
    assert out.attrs["duplicates"]["same_patients"] == {"pairs": 3, "applied": 2, "joined": 2}
    assert groups.merged_groups(out)["patient_ids"].tolist() == ["P1, P2, P3"]
    plain = groups.assign_groups(frame, hashes, duplicates=duplicates)
    assert (plain["group"] == plain["patient"]).all()
    source = groups.assign_groups(frame, hashes, group_by="source", same_patients=same)
    assert source.groupby("patient")["group"].first()[["P1", "P2", "P3"]].nunique() == 1


def test_pairs_stay_together_in_splits_folds_and_bootstrap():
    """Patients P0 and P1 (different labels, so a split would separate them half the time) are one
    group: the same part for every seed and fold, and drawn together in every bootstrap resample."""
    frame, hashes = _frame(n_patients=20)
    same = pd.DataFrame({"patient_a": ["P0"], "patient_b": ["P1"]})
    apart = together = 0
    for seed in range(6):
        for merged in (False, True):
            grouped = groups.assign_groups(frame, hashes, same_patients=same if merged else None)
            split = data.split_frame(grouped, seed=seed, val_size=0.2, test_size=0.2, allow_small_validation=True)
            parts = split.groupby("patient")["part"].first()
            if merged:
                together += parts["P0"] == parts["P1"]
            else:
                apart += parts["P0"] != parts["P1"]
        grouped = groups.assign_groups(frame, hashes, same_patients=same)
        folds = [data.split_frame(grouped, folds=4, fold=k, seed=seed, allow_small_validation=True)
                 for k in range(4)]
        assert all(f.groupby("patient")["part"].first()[["P0", "P1"]].nunique() == 1 for f in folds)
    assert together == 6 and apart > 0  # without the pair, some seed separates them

    grouped = groups.assign_groups(frame, hashes, same_patients=same)
    p0, p1 = (np.flatnonzero(grouped["patient"].to_numpy() == p) for p in ("P0", "P1"))
    for column, expect_equal in (("group", True), ("patient", False)):
        drawn = []
        patient_bootstrap(lambda rows: drawn.append(np.bincount(rows, minlength=len(grouped))) or {"n": len(rows)},
                          grouped[column].to_numpy(), labels=grouped["label"].to_numpy(), n_bootstrap=40, seed=0)
        same_counts = [bool((d[p0] == d[p1]).all()) for d in drawn[1:]]  # drawn[0]: the point estimate
        assert all(same_counts) if expect_equal else not all(same_counts)


# --------------------------------------------------------------------------- review candidates

def test_review_pairs_lists_close_images_of_different_groups():
    frame, hashes = _frame(n_patients=6)
    base = np.unpackbits(np.frombuffer(bytes.fromhex(hashes.loc[0, "near"]), dtype=np.uint8))
    # P0's 2nd image 10 bits from its 1st, P1's 40 (50 from the 2nd), P2's 70 (too far); disjoint bits
    for row, flips in ((1, range(0, 10)), (2, range(100, 140)), (4, range(150, 220))):
        bits = base.copy()
        bits[list(flips)] ^= 1
        hashes.loc[row, "near"] = np.packbits(bits).tobytes().hex()
    grouped = groups.assign_groups(frame, hashes)
    pairs = S.review_pairs(grouped, hashes, max_distance=64)
    assert pairs[["image_a", "image_b", "patient_a", "patient_b", "distance"]].values.tolist() == [
        ["p0_0.png", "p1_0.png", "P0", "P1", 40], ["p0_1.png", "p1_0.png", "P0", "P1", 50]]
    same = pd.DataFrame({"patient_a": ["P0"], "patient_b": ["P1"]})
    assert S.review_pairs(groups.assign_groups(frame, hashes, same_patients=same), hashes).empty
    with pytest.raises(ValueError, match=r"Expected a review distance >= 0 bits\. Received: max_distance=-1"):
        S.review_pairs(grouped, hashes, max_distance=-1)
    with pytest.raises(ValueError, match=r"Expected one hash row per frame row \(12\)\. Received: len\(hashes\)=11"):
        S.review_pairs(grouped, hashes.iloc[1:])


def test_mark_reviewed_reads_the_review_file_beside_the_pairs(tmp_path, monkeypatch):
    pairs = pd.DataFrame({"image_a": ["x.png", "u.png"], "image_b": ["y.png", "v.png"]})
    _write(tmp_path / "mine.csv", [["1", "2", "r"]])
    monkeypatch.chdir(tmp_path)  # a file named relative to the working folder
    record = {"file": "mine.csv", "shipped": False}
    assert S.mark_reviewed(pairs, record)["review"].tolist() == ["", ""]  # no review file yet
    _write(tmp_path / ("mine" + S.REVIEW_SUFFIX), [["y.png", "x.png", "keep apart"]],
           columns=("image_a", "image_b", "decision"))
    assert S.mark_reviewed(pairs, record)["review"].tolist() == ["keep apart", ""]  # either order
    assert S.mark_reviewed(pairs, None)["review"].tolist() == ["", ""]


def _captioned_collection(root):
    """Seven patients; patient 3's film is patient 1's with a caption burnt in (a near copy)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows = []
    for p, finding in enumerate(["COVID-19", "COVID-19", "No Finding", "COVID-19", "No Finding", "COVID-19",
                                 "No Finding"]):
        if p == 3:  # about 36 bits from p1: above the merge distance (24), within the review distance
            image = Image.open(root / "images" / "p1.png").copy()
            ImageDraw.Draw(image).rectangle([40, 100, 88, 120], fill=250)
        else:  # distinct films: 110 bits apart or more
            low = rng.standard_normal((24, 24))
            grey = ((low - low.min()) / np.ptp(low) * 200 + 20).astype(np.uint8)
            image = Image.fromarray(grey).resize((128, 128), Image.Resampling.BICUBIC)
        image.save(root / "images" / f"p{p}.png")
        rows.append({"patientid": str(p), "finding": finding, "filename": f"p{p}.png", "view": "PA",
                     "modality": "X-ray"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_eda_review_and_same_patients_options(tmp_path, capsys):
    root = _captioned_collection(tmp_path / "data")
    cache = str(tmp_path / "cache")
    assert cli.main(["eda", "--data-dir", str(root), "--cache-dir", cache, "--out", str(tmp_path / "eda")]) == 0
    out = capsys.readouterr().out
    listed = pd.read_csv(tmp_path / "eda" / "review_pairs.csv", dtype={"patient_a": str, "patient_b": str})
    assert "1 pairs of images of different split groups are within 64 of 256 near-hash bits, 1 not reviewed" in out
    assert listed[["patient_a", "patient_b"]].values.tolist() == [["1", "3"]] and 24 < listed["distance"][0] <= 64
    assert [p.name for p in (tmp_path / "eda" / "review_pairs").glob("*.png")] == ["pair-01_1_3.png"]
    pairs = _write(tmp_path / "pairs.csv", [["1", "3", "caption burnt into one copy"]])
    assert cli.main(["split", "--data-dir", str(root), "--cache-dir", cache, "--same-patients", str(pairs),
                     "--task", "covid-vs-normal", "--out", str(tmp_path / "split.csv"), "--val-size", "0.25",
                     "--test-size", "0.25", "--allow-small-validation"]) == 0
    split = data.read_split(tmp_path / "split.csv")
    assert set(split.loc[split["patient"].isin(["1", "3"]), "group"]) == {"1+3"}
    assert cli.main(["eda", "--data-dir", str(root), "--cache-dir", cache, "--same-patients", str(pairs)]) == 0
    assert "same patients: 1 confirmed pairs of patient ids from" in capsys.readouterr().out
    bad = _write(tmp_path / "bad.csv", [["1", "42", "x"]])
    assert cli.main(["eda", "--data-dir", str(root), "--cache-dir", cache, "--same-patients", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Received: unknown=['42']" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["audit", "--data-dir", str(root), "--cache-dir", cache, "--same-patients",
                     str(tmp_path / "gone.csv")]) == 2
    assert "Expected a same-patients CSV file" in capsys.readouterr().err
    assert cli.main(["eda", "--data-dir", str(root), "--review-distance", "-1"]) == 2
    assert "Received: review_distance=-1" in capsys.readouterr().err


def test_train_config_checks_and_records_same_patients(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Expected 'auto', 'none' or a same-patients CSV file.*"
                                                r"Received: same_patients='nope.csv'"):
        check_config(TrainConfig(same_patients="nope.csv", weights="none"))
    assert check_config(TrainConfig(same_patients="none", weights="none")).same_patients == "none"
    assert json.loads(TrainConfig().to_json())["same_patients"] == "auto"
    # a run made before the option was grouped without pairs: resuming or repeating it keeps that
    assert TrainConfig.from_dict({"run_dir": "runs/old", "seed": 1}).same_patients == "none"
    assert TrainConfig.from_dict({"seed": 1}).same_patients == "auto"


@pytest.mark.realdata
def test_real_snapshot_reviewed_candidates(real_data, real_cache):
    """On the 2020 snapshot the shipped file joins 192 and 196 and every candidate within 64 bits
    left is one the review kept apart."""
    from covidxr.images import candidate_pairs, load_grouped

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = load_grouped(real_data, task=None, cache_dir=real_cache)
    assert frame.attrs["same_patients"]["joined"] == 1
    left = candidate_pairs(frame, cache_dir=real_cache)
    review = pd.read_csv(S.SHIPPED_DIR / ("covid-chestxray-dataset-2020" + S.REVIEW_SUFFIX), dtype=str)
    kept_apart = set(zip(review.loc[review["decision"] == "keep apart", "image_a"],
                         review.loc[review["decision"] == "keep apart", "image_b"]))
    assert len(left) == 3 and set(zip(left["image_a"], left["image_b"])) <= kept_apart
    assert set(left["review"]) == {"keep apart"}
