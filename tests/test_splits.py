"""Tests for covidxr.data.splits and the checked split files of covidxr.config: splits by group,
sizes close to the request, small validation parts, source-held-out splits, split files."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from covidxr import data
from covidxr.config import TrainConfig, make_split, split_from_file
from covidxr.data import SmallValidationWarning
from covidxr.data.groups import assign_groups


def _frame(groups_per_class=20, images=None, classes=("covid", "normal"), seed=0):
    """One patient per group, ``images(i)`` images each (default 1)."""
    rows = []
    for c in classes:
        for i in range(groups_per_class):
            for k in range(images(i) if images else 1):
                rows.append({"image": f"{c}{i}_{k}.png", "patient": f"{c}{i}", "label": c})
    return pd.DataFrame(rows)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _parts_per(split, column):
    return split.groupby(column)["part"].nunique().max()


def test_split_sizes_follow_the_request():
    frame = _frame(100)
    split = data.split_patients(frame, val_size=0.1, test_size=0.4, seed=0)
    sizes = split.attrs["split_sizes"]
    assert sizes["groups"] == {"train": 0.5, "val": 0.1, "test": 0.4}  # StratifiedGroupKFold gave 0.08 / 0.50
    assert sizes["requested"] == {"val": 0.1, "test": 0.4}
    assert sizes["counts"]["test"] == {"images": 80, "groups": 80}
    assert data.split_sizes(split) == {k: v for k, v in sizes.items() if k != "requested"}
    assert not split["part"].equals(data.split_patients(frame, val_size=0.1, test_size=0.4, seed=1)["part"])


def test_split_sizes_warn_when_images_differ_from_the_request():
    frame = _frame(10, images=lambda i: 60 if i == 0 else 1)  # one patient per class holds most images
    with pytest.warns(UserWarning, match=r"image fractions differ from the request by more than 0.05.*"
                                         r"Received: val_size=0.1, test_size=0.1"):
        split = data.split_patients(frame, val_size=0.1, test_size=0.1, seed=0, allow_small_validation=True)
    assert split.attrs["split_sizes"]["groups"]["test"] == 0.1


def test_splits_and_folds_keep_groups_together():
    frame = _frame(12)
    # patients covid0 and covid1 share an image: one group; the group follows its most common label
    frame["group"] = frame["patient"].replace({"covid1": "covid0+covid1", "covid0": "covid0+covid1"})
    for seed in range(10):
        split = _quiet(data.split_patients, frame, seed=seed, val_size=0.2, test_size=0.2)
        assert _parts_per(split, "group") == 1
        assert split.attrs["split_sizes"]["counts"]["val"]["groups"] == 4  # 2 of 11 and 2 of 12 groups
    tests = []
    for fold in range(3):
        split = _quiet(data.kfold_split, frame, folds=3, fold=fold, val_size=0.3, seed=0)
        assert _parts_per(split, "group") == 1
        tests.append(set(split.loc[split.part == "test", "group"]))
    assert set().union(*tests) == set(frame["group"]) and sum(map(len, tests)) == frame["group"].nunique()


@pytest.mark.filterwarnings("ignore:The split's image fractions")
def test_small_validation_warns_refuses_or_is_allowed():
    frame = _frame(10)  # round(0.15 * 10) = 2 validation groups per class: warned
    with pytest.warns(SmallValidationWarning, match=r"fewer than 5 groups.*val_groups_per_class=\{'covid': 2"):
        data.split_frame(frame, seed=0)
    small = _frame(5)  # round(0.15 * 5) = 1: refused
    with pytest.raises(ValueError, match=r"at least 2 groups .* allow_small_validation=True .*"
                                         r"Received: val_groups_per_class=\{'covid': 1, 'normal': 1\}"):
        _quiet(data.split_frame, small, seed=0)
    with pytest.raises(ValueError, match=r"val_groups_per_class="):
        _quiet(data.split_frame, small, folds=2, fold=0, seed=0)
    with pytest.warns(SmallValidationWarning):
        split = data.split_frame(small, seed=0, allow_small_validation=True)
    assert split.loc[split.part == "val", "label"].value_counts().to_dict() == {"covid": 1, "normal": 1}
    config = TrainConfig(allow_small_validation=True)  # make_split passes the option on
    assert make_split(config, small)["part"].equals(split["part"])
    with pytest.raises(ValueError, match=r"val_groups_per_class="):
        _quiet(make_split, TrainConfig(), small)
    with pytest.warns(SmallValidationWarning):  # the ini filter hides it elsewhere, never from pytest.warns
        warnings.warn(SmallValidationWarning("x"))


def _sourced(spec, seed=0):
    """A grouped frame from ``{source: (covid patients, normal patients)}``, one image per patient."""
    rows = [{"image": f"{s}-{c}{i}.png", "patient": f"{s}-{c}{i}", "label": c, "source": s}
            for s, counts in spec.items() for c, n in zip(("covid", "normal"), counts) for i in range(n)]
    frame = pd.DataFrame(rows)
    rng = np.random.default_rng(seed)
    hashes = pd.DataFrame({"exact": [f"{i:064x}" for i in range(len(frame))],
                           "near": [rng.bytes(32).hex() for _ in range(len(frame))], "std": 50.0})
    return assign_groups(frame, hashes, group_by="source")


def test_source_held_out_splits_and_folds():
    frame = _sourced({f"site{k}.org": (3, 1 + k % 3) for k in range(12)})
    assert frame["group"].str.startswith("source:").all() and frame["group"].nunique() == 12
    split = _quiet(data.split_frame, frame, seed=0, val_size=0.2, test_size=0.2)
    assert _parts_per(split, "source") == 1 and set(split["part"]) == {"train", "val", "test"}
    held = []
    for fold in range(3):  # leave-sources-out cross-validation
        split = _quiet(data.split_frame, frame, folds=3, fold=fold, val_size=0.25, seed=0)
        assert _parts_per(split, "source") == 1
        held.append(set(split.loc[split.part == "test", "source"]))
    assert sorted(s for h in held for s in h) == sorted(frame["source"].unique())


def test_sources_that_cannot_be_split_are_named():
    # only one source has normal images: no split gives every part a normal image
    frame = _sourced({"a.org": (4, 0), "b.org": (4, 0), "c.org": (4, 0), "d.org": (2, 3)})
    with pytest.raises(ValueError, match=r"Too few groups .*Received: groups_per_class=\{'covid': 4, 'normal': 1\}, "
                                         r"images_per_source_and_class=\{'a.org': \{'covid': 4\}.*"
                                         r"'d.org': \{'covid': 2, 'normal': 3\}\}"):
        data.split_frame(frame)
    with pytest.raises(ValueError, match=r"for 2 folds.*images_per_source_and_class=.*'d.org'"):
        data.split_frame(frame, folds=2)
    # two sources hold normal images: one is the test fold, the other cannot be both training and validation
    two = _sourced({"a.org": (4, 1), "b.org": (4, 0), "c.org": (4, 0), "d.org": (2, 3)})
    with pytest.raises(ValueError, match=r"part 'val' has no image of class \[.*'normal'\].*"
                                         r"images_per_source_and_class=\{'a.org': \{'covid': 4, 'normal': 1\}.*"
                                         r"'d.org': \{'covid': 2, 'normal': 3\}"):
        data.split_frame(two, folds=2, fold=0, seed=0)


# --------------------------------------------------------------------------- split files

def test_split_file_columns_and_old_files(tmp_path):
    frame = _frame(10).assign(group=lambda f: f["patient"], hash=lambda f: [f"{i:064x}" for i in range(len(f))])
    split = _quiet(data.split_patients, frame, seed=0)
    back = data.read_split(data.write_split(split, tmp_path / "split.csv"))
    assert list(back.columns) == list(data.SPLIT_COLUMNS) == ["image", "patient", "group", "hash", "label", "part"]
    assert back["hash"].tolist() == split["hash"].tolist()
    split[["image", "patient", "label", "part"]].to_csv(tmp_path / "old.csv", index=False)  # before groups
    old = data.read_split(tmp_path / "old.csv")
    assert old["group"].equals(old["patient"]) and (old["hash"] == "").all()


@pytest.mark.parametrize("edit, match", [
    (lambda s: pd.concat([s, s.iloc[[0, 1]]]), r"each image once.*2 images are listed more than once. "
                                               r"Received: images=\['covid0_0.png', 'covid0_1.png'\]"),
    (lambda s: s.assign(part=np.where(s.image == "covid0_1.png", "test", s.part)),
     r"one part per patient .*1 patients are in more than one part. Received: patients=\{'covid0': \['test', 'train'\]\}"),
    (lambda s: s.assign(group=np.where(s.patient == "covid1", "covid0", s.group)),
     r"one part per group .*Received: groups=\{'covid0': \['test', 'train'\]\}"),
])
def test_read_split_refuses_leaky_files(tmp_path, edit, match):
    frame = _frame(10, images=lambda i: 2)
    parts = {"covid0": "train", "covid1": "test"}
    split = frame.assign(group=frame["patient"], hash="", part=frame["patient"].map(parts).fillna("val"))
    edit(split).to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(ValueError, match=match):
        data.read_split(tmp_path / "split.csv")


def test_split_from_file_checks_labels_and_current_groups(tmp_path):
    frame = _frame(10).assign(hash="")
    frame["group"] = frame["patient"]
    split = _quiet(data.split_patients, frame, seed=0)
    path = data.write_split(split, tmp_path / "split.csv")
    assert split_from_file(frame, path)["part"].tolist() == split["part"].tolist()
    relabelled = split.assign(label=np.where(split.image == "covid3_0.png", "normal", split.label))
    data.write_split(relabelled, tmp_path / "labels.csv")
    with pytest.raises(ValueError, match=r"labels of the split file .* 1 images disagree. "
                                         r"Received: images=\{'covid3_0.png': \{'file': 'normal', 'dataset': 'covid'\}\}"):
        split_from_file(frame, tmp_path / "labels.csv")
    # today's dataset finds covid0's image again under covid1's id: the old file splits the twins
    a, b = (split.loc[split.part == part, "patient"].iloc[0] for part in ("train", "test"))
    merged = frame.assign(group=frame["patient"].replace({a: f"{a}+{b}", b: f"{a}+{b}"}))
    with pytest.raises(ValueError, match=rf"one part per split group of the dataset; 1 groups .*Received: groups="
                                         rf"\{{'{a}\+{b}': \{{'patients': \['{a}', '{b}'\], 'parts': \['test', 'train'\]\}}\}}"):
        split_from_file(merged, path)


# --------------------------------------------------------------------------- real snapshot

PAIRS = [("97", "178"), ("78", "201")]


def _pair_splits(split) -> int:
    return sum(split.loc[split.patient.isin(pair), "part"].nunique() > 1 for pair in PAIRS)


@pytest.mark.realdata
def test_real_snapshot_duplicate_patients_never_split(real_data, real_cache):
    from covidxr.images import load_grouped

    frame = _quiet(load_grouped, real_data, task="covid-vs-rest", cache_dir=real_cache)
    for a, b in PAIRS:
        assert frame.loc[frame.patient == a, "group"].iloc[0] == frame.loc[frame.patient == b, "group"].iloc[0]
    for seed in range(20):
        assert _pair_splits(_quiet(data.split_frame, frame, seed=seed)) == 0
        assert _pair_splits(_quiet(data.split_frame, frame, folds=5, fold=0, seed=seed)) == 0
    kept = _quiet(load_grouped, real_data, task="covid-vs-rest", cache_dir=real_cache, duplicates="keep")
    assert sum(_pair_splits(_quiet(data.split_frame, kept, seed=seed)) for seed in range(20)) > 0
