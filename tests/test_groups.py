"""Tests for covidxr.data.groups: duplicate pairs, union–find split groups, source groups, merged
groups and mixed-label patients, on small hand-made hash tables (nothing is decoded here)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from covidxr import data
from covidxr.data import groups


def _near(rng, flip=(), base=None):
    """A 64-hex-digit near hash: random bits (or ``base``'s) with the bits ``flip`` inverted."""
    bits = rng.integers(0, 2, 256).astype(np.uint8) if base is None else base.copy()
    bits[list(flip)] ^= 1
    return bits, np.packbits(bits).tobytes().hex()


def _table(spec, *, seed=0):
    """A frame and its hashes from ``spec``: rows ``(image, patient, label, source, copy_of, flipped)``;
    ``copy_of`` names an earlier image whose pixels this one copies exactly (``flipped`` None) or
    nearly (``flipped`` bits of the near hash inverted)."""
    rng = np.random.default_rng(seed)
    rows, hashes, bits_of = [], [], {}
    for image, patient, label, source, copy_of, flipped in spec:
        if copy_of is None:
            bits, near = _near(rng)
            exact = f"x-{image}"
        elif flipped is None:
            bits, near = bits_of[copy_of], hashes[[r["image"] for r in rows].index(copy_of)]["near"]
            exact = hashes[[r["image"] for r in rows].index(copy_of)]["exact"]
        else:
            bits, near = _near(rng, flip=range(flipped), base=bits_of[copy_of])
            exact = f"x-{image}"
        bits_of[image] = bits
        rows.append({"image": image, "patient": patient, "label": label, "category": label, "source": source})
        hashes.append({"exact": exact, "near": near, "std": 40.0})
    return pd.DataFrame(rows), pd.DataFrame(hashes)


# patients 1 and 2 share an exact copy, 2 and 3 a near copy (10 bits apart); 4 stands alone
SPEC = [
    ("a.png", "1", "covid", "s1", None, None),
    ("b.png", "1", "covid", "s1", None, None),
    ("c.png", "2", "covid", "s2", "a.png", None),
    ("d.png", "2", "covid", "s2", None, None),
    ("e.png", "3", "covid", "s3", "d.png", 10),
    ("f.png", "4", "non-covid", "s4", None, None),
    ("g.png", "5", "non-covid", "s4", None, None),
    ("h.png", "6", "non-covid", "s5", None, None),
]


def test_duplicate_pairs_exact_and_near():
    _, hashes = _table(SPEC)
    pairs = groups.duplicate_pairs(hashes)
    assert sorted(map(tuple, pairs[["a", "b", "kind", "distance"]].to_numpy().tolist())) == [
        (0, 2, "exact", 0), (3, 4, "near", 10)]
    assert groups.duplicate_pairs(hashes, max_distance=9)["kind"].tolist() == ["exact"]
    assert groups.duplicate_pairs(hashes, max_distance=0)["kind"].tolist() == ["exact"]


def test_union_find_merges_patients_sharing_an_exact_and_a_near_copy():
    frame, hashes = _table(SPEC)
    out = groups.assign_groups(frame, hashes)
    assert out.loc[out["patient"].isin(["1", "2", "3"]), "group"].nunique() == 1
    assert out.loc[out["patient"] == "1", "group"].iloc[0] == "1+2+3"
    assert dict(zip(out["patient"], out["group"])) == {"1": "1+2+3", "2": "1+2+3", "3": "1+2+3", "4": "4", "5": "5",
                                                       "6": "6"}
    assert list(out["patient"]) == list(frame["patient"]) and list(out["hash"]) == list(hashes["exact"])
    info = out.attrs["duplicates"]
    assert info["pairs"] == {"exact": 1, "near": 1} and info["cross_patient_pairs"] == 2
    assert info["merged_groups"] == [{"group": "1+2+3", "patients": 3, "images": 5}]
    assert groups.group_column(out) == "group" and groups.group_column(frame) == "patient"


def test_different_images_are_not_merged():
    frame, hashes = _table([(f"{i}.png", str(i), "covid", "s", None, None) for i in range(6)])
    out = groups.assign_groups(frame, hashes)
    assert list(out["group"]) == list(out["patient"]) and out.attrs["duplicates"]["merged_groups"] == []


def test_low_variance_images_are_never_merged():
    frame, hashes = _table(SPEC)
    hashes.loc[[0, 2], "std"] = groups.MIN_STD / 2  # the exact pair a/c: blank images
    out = groups.assign_groups(frame, hashes)
    assert out.loc[out["patient"] == "1", "group"].iloc[0] == "1"
    assert out.loc[out["patient"] == "2", "group"].iloc[0] == "2+3"
    blank, blank_hashes = _table([("a", "1", "covid", "s", None, None), ("b", "2", "covid", "s", "a", None)])
    blank_hashes["std"] = 0.0
    assert groups.duplicate_pairs(blank_hashes).empty


def test_unreadable_images_are_never_merged():
    frame, hashes = _table(SPEC)
    hashes.loc[[0, 2], ["exact", "near"]] = ""
    out = groups.assign_groups(frame, hashes)
    assert out.loc[out["patient"] == "1", "group"].iloc[0] == "1"


def test_drop_keeps_one_image_per_cluster_with_a_warning():
    frame, hashes = _table(SPEC)
    with pytest.warns(UserWarning, match=r"2 images are copies of another image .* left out \(duplicates='drop'\): "
                                         r"\['c.png', 'e.png'\]"):
        out = groups.assign_groups(frame, hashes, duplicates="drop")
    assert list(out["image"]) == ["a.png", "b.png", "d.png", "f.png", "g.png", "h.png"]
    assert list(out["group"]) == list(out["patient"]) and out.attrs["duplicates"]["dropped"] == 2


def test_keep_warns_and_keeps_patients_apart():
    frame, hashes = _table(SPEC)
    with pytest.warns(UserWarning, match=r"2 pairs of images under different patient ids .* \(duplicates='keep'\)"):
        out = groups.assign_groups(frame, hashes, duplicates="keep")
    assert list(out["group"]) == list(frame["patient"]) and len(out) == len(frame)


def test_group_by_source_joins_groups_and_sources():
    frame, hashes = _table(SPEC)
    out = groups.assign_groups(frame, hashes, group_by="source")
    # s1, s2, s3 are joined by the merged patients 1+2+3; s4 holds patients 4 and 5; s5 stands alone
    assert out["group"].nunique() == 3 and out.attrs["group_by"] == "source"
    assert (out.groupby("source")["group"].nunique() == 1).all()
    assert (out.groupby("patient")["group"].nunique() == 1).all()
    assert out.loc[out["source"] == "s4", "group"].iloc[0] == "source:s4"
    assert out.loc[out["source"] == "s1", "group"].iloc[0] == "source:s1+s2+s3"


def test_assign_groups_errors():
    frame, hashes = _table(SPEC)
    with pytest.raises(ValueError, match=r"Expected one of \['merge', 'drop', 'keep'\]. Received: duplicates='twice'"):
        groups.assign_groups(frame, hashes, duplicates="twice")
    with pytest.raises(ValueError, match=r"Expected one of \['patient', 'source'\]. Received: group_by='site'"):
        groups.assign_groups(frame, hashes, group_by="site")
    with pytest.raises(ValueError, match=r"one hash row per frame row \(8\). Received: len\(hashes\)=7"):
        groups.assign_groups(frame, hashes.iloc[:7])


def test_merged_groups_table():
    frame, hashes = _table(SPEC)
    table = data.merged_groups(groups.assign_groups(frame, hashes))
    assert table.to_dict("records") == [{"group": "1+2+3", "patients": 3, "images": 5, "patient_ids": "1, 2, 3"}]
    assert data.merged_groups(frame).empty
    many = pd.DataFrame({"patient": ["10", "9", "9", "2", "7"], "image": list("abcde"),
                         "group": ["g", "g", "g", "h", "h"]})
    assert data.merged_groups(many)[["group", "patient_ids"]].values.tolist() == [["g", "9, 10"], ["h", "2, 7"]]


MIXED = pd.DataFrame({
    "patient": ["12", "12", "3", "3", "3", "4", "5", "5"],
    "image": list("abcdefgh"),
    "category": ["covid", "normal", "covid", "covid", "other", "normal", "other", "other"],
    "group": ["12", "12", "3+4", "3+4", "3+4", "3+4", "5", "5"],
})


def test_mixed_label_patients_by_category_and_label():
    table = data.mixed_label_patients(MIXED)
    assert table.to_dict("records") == [
        {"patient": "3", "group": "3+4", "labels": "covid: 2, other: 1", "images": 3},
        {"patient": "12", "group": "12", "labels": "covid: 1, normal: 1", "images": 2}]
    # with a task applied, the task's label counts: covid-vs-rest makes patient 12 mixed, 3 too
    labelled = MIXED.assign(label=MIXED["category"].map(data.get_task("covid-vs-rest").mapping))
    assert list(data.mixed_label_patients(labelled)["labels"]) == ["covid: 2, non-covid: 1", "covid: 1, non-covid: 1"]
    only_normal = MIXED.assign(label=MIXED["category"].replace("covid", "normal"))
    assert list(data.mixed_label_patients(only_normal)["patient"]) == ["3"]
    by_group = data.mixed_label_patients(MIXED, by="group")
    assert by_group.to_dict("records")[0] == {"group": "12", "patients": 1, "labels": "covid: 1, normal: 1",
                                              "images": 2}
    assert list(by_group["group"]) == ["12", "3+4"]
    assert "group" not in data.mixed_label_patients(MIXED.drop(columns="group")).columns


def test_mixed_label_patients_errors():
    with pytest.raises(ValueError, match=r"Expected one of \['patient', 'group'\]. Received: by='source'"):
        data.mixed_label_patients(MIXED, by="source")
    with pytest.raises(ValueError, match=r"Expected a frame with a 'group' column. Received: columns="):
        data.mixed_label_patients(MIXED.drop(columns="group"), by="group")


def test_drop_mixed_patients_warns_with_count_and_names():
    with pytest.warns(UserWarning, match=r"2 patients have images of more than one label and are left out "
                                         r"\(drop_mixed_patients=True\), 5 images: \['3', '12'\]"):
        out = data.drop_mixed_patients(MIXED)
    assert list(out["patient"]) == ["4", "5", "5"] and out.attrs["mixed_dropped"] == ["3", "12"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(data.drop_mixed_patients(out)) == 3
