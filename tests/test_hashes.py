"""Tests for covidxr.images.hashes: exact and perceptual hashes of small synthetic radiographs,
near copies (re-saved as JPEG at another size, brightened) merged and different images kept
apart, blank images never merged, the per-file hash index (reused, refreshed, rebuilt), and the
merged groups of the real snapshot."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxr.data import merged_groups
from covidxr.images import hashes


def _radiograph(seed, size=(120, 100)):
    """A fake radiograph (grey, (H, W) uint8): a body, two dark lungs, a few blobs that make each
    seed's image its own, mild noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    img = 140 + 40 * np.sin(x / w * np.pi)
    for cx in (w * 0.3, w * 0.7):
        img -= 70 * (((x - cx) / (w * 0.17)) ** 2 + ((y - h * 0.5) / (h * 0.33)) ** 2 < 1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 20)
        img += rng.uniform(-60, 60) * (((x - cx) ** 2 + (y - cy) ** 2) < r * r)
    img += 6 * rng.standard_normal((h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def _distance(a, b):
    return bin(int(hashes.pixel_hashes(a)[1], 16) ^ int(hashes.pixel_hashes(b)[1], 16)).count("1")


def test_pixel_hashes():
    a = _radiograph(0)
    exact, near, std = hashes.pixel_hashes(a)
    assert len(exact) == 64 and len(near) == 64 and std > 10
    assert hashes.pixel_hashes(a.copy())[:2] == (exact, near)
    changed = a.copy()
    changed[0, 0] ^= 1
    assert hashes.pixel_hashes(changed)[0] != exact and hashes.pixel_hashes(changed)[1] == near
    # the same bytes in another shape are another image
    assert hashes.pixel_hashes(a.reshape(100, 120))[0] != exact
    assert hashes.pixel_hashes(np.full((50, 40), 128, np.uint8))[2] == 0.0


def _jpeg(grey, size):
    buf = io.BytesIO()
    Image.fromarray(grey).resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=75)
    return buf.getvalue()


def _dataset(root):
    """Image files and their frame: patient 1's film, an exact copy under 2, a smaller JPEG of it
    under 3, a brightened copy under 4, other films under 5 and 6, two identical blank images
    under 7 and 8, a file that is no image under 9."""
    root.mkdir(parents=True, exist_ok=True)
    a = _radiograph(0)
    files = {
        "p1.png": a, "p2.png": a, "p3.jpg": _jpeg(a, (80, 96)),
        "p4.png": np.clip(a.astype(int) + 20, 0, 255).astype(np.uint8),
        "p5.png": _radiograph(1), "p6.png": _radiograph(2),
        "p7.png": np.full((60, 50), 200, np.uint8), "p8.png": np.full((60, 50), 200, np.uint8),
        "p9.png": b"not an image",
    }
    for name, content in files.items():
        if isinstance(content, bytes):
            (root / name).write_bytes(content)
        else:
            Image.fromarray(content).save(root / name)
    names = sorted(files)
    return pd.DataFrame({"image": names, "path": [str(root / n) for n in names],
                         "patient": [n[1] for n in names], "source": "site.example.org",
                         "label": ["covid"] * 5 + ["non-covid"] * 4})


def test_near_copies_merge_and_different_images_do_not(tmp_path):
    assert _distance(_radiograph(0), _radiograph(1)) > 2 * hashes.NEAR_DISTANCE
    frame = _dataset(tmp_path / "data")
    out = hashes.group_frame(frame, cache_dir=tmp_path / "cache")
    group = dict(zip(out["patient"], out["group"]))
    assert group == {"1": "1+3 others", "2": "1+3 others", "3": "1+3 others", "4": "1+3 others",
                     "5": "5", "6": "6", "7": "7", "8": "8", "9": "9"}
    assert merged_groups(out)[["group", "patients", "images"]].values.tolist() == [[group["1"], 4, 4]]
    by = out.set_index("patient")
    assert by.loc["1", "hash"] == by.loc["2", "hash"] != by.loc["3", "hash"] and by.loc["9", "hash"] == ""
    info = out.attrs["duplicates"]
    assert info["pairs"]["exact"] == 1 and info["pairs"]["near"] >= 2  # blank 7/8 share pixels, never a pair


def test_drop_mixed_patients_in_group_frame(tmp_path):
    frame = _dataset(tmp_path / "data")
    frame.loc[frame["patient"] == "6", "patient"] = "5"  # patient 5: one covid and one non-covid film
    with pytest.warns(UserWarning, match=r"1 patients have images of more than one label .* 2 images: \['5'\]"):
        out = hashes.group_frame(frame, cache_dir=tmp_path / "cache", drop_mixed_patients=True)
    assert "5" not in set(out["patient"]) and len(out) == len(frame) - 2 and out.attrs["mixed_dropped"] == ["5"]


@pytest.fixture
def counted(monkeypatch):
    """Count the files :func:`covidxr.images.hashes.image_hashes` decodes."""
    calls = []
    real = hashes.load_radiograph

    def load(path, **kwargs):
        calls.append(os.path.basename(path))
        return real(path, **kwargs)

    monkeypatch.setattr(hashes, "load_radiograph", load)
    return calls


def test_hash_index_is_reused_and_refreshed(tmp_path, counted, monkeypatch):
    frame = _dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    first = hashes.image_hashes(frame, cache_dir=cache)
    assert len(counted) == len(frame) and (cache / "hashes" / "index.csv").is_file()
    counted.clear()
    second = hashes.image_hashes(frame, cache_dir=cache)
    assert counted == [] and second.equals(first)
    # a touched file (new modification time) is hashed again, and only that one
    path = frame["path"].iloc[4]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert hashes.image_hashes(frame, cache_dir=cache).equals(first) and counted == [os.path.basename(path)]
    counted.clear()
    monkeypatch.setattr(hashes, "DECODER_VERSION", hashes.DECODER_VERSION + 1)
    hashes.image_hashes(frame, cache_dir=cache)
    assert sorted(counted) == sorted(frame["image"])


def test_damaged_index_is_rebuilt_with_a_warning(tmp_path, counted):
    frame = _dataset(tmp_path / "data").iloc[:3]
    cache = tmp_path / "cache"
    first = hashes.image_hashes(frame, cache_dir=cache)
    index = cache / "hashes" / "index.csv"
    text = index.read_text().splitlines()
    index.write_text("\n".join([text[0], text[1].replace(",", ";", 2)] + text[2:]) + "\n")
    counted.clear()
    with pytest.warns(UserWarning, match=r"image hash index .*index.csv cannot be read .*hashing every image again"):
        again = hashes.image_hashes(frame, cache_dir=cache)
    assert again.equals(first) and len(counted) == 3
    counted.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hashes.image_hashes(frame, cache_dir=cache)  # rebuilt: read without a warning, nothing decoded
    assert counted == []


def test_unwritable_index_warns_and_still_hashes(tmp_path):
    frame = _dataset(tmp_path / "data").iloc[:2]
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "hashes").write_text("a file where the index folder should be")
    with pytest.warns(UserWarning, match=r"Could not write the image hash index"):
        out = hashes.image_hashes(frame, cache_dir=tmp_path / "cache")
    assert out["exact"].iloc[0] == out["exact"].iloc[1] != ""


def test_missing_file_gets_blank_hashes(tmp_path):
    frame = _dataset(tmp_path / "data").iloc[:2]
    frame.loc[0, "path"] = str(tmp_path / "gone.png")
    out = hashes.image_hashes(frame, cache_dir=tmp_path / "cache")
    assert out.iloc[0].tolist() == ["", "", 0.0] and out["exact"].iloc[1] != ""


@pytest.mark.realdata
def test_real_snapshot_merged_groups(real_data, real_cache):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = hashes.load_grouped(real_data, task="covid-vs-rest", cache_dir=real_cache)
    table = merged_groups(frame)
    # 192+196 (one film under two ids, 44-46 bits apart) by the shipped same-patients file
    assert table[["group", "patients", "images"]].values.tolist() == [["178+97", 2, 9], ["192+196", 2, 6],
                                                                    ["137+202", 2, 2], ["201+78", 2, 2]]
    assert frame.attrs["same_patients"]["file"] == "covid-chestxray-dataset-2020.csv"
    group = frame.groupby("patient")["group"].first()
    for a, b in (("97", "178"), ("78", "201"), ("137", "202"), ("192", "196")):
        assert group[a] == group[b]
    merged = frame["group"] != frame["patient"]
    assert set(frame.loc[merged, "patient"]) == {"97", "178", "78", "201", "137", "202", "192", "196"}
    assert len(merged_groups(hashes.group_frame(frame, cache_dir=real_cache))) == 3  # no pairs given
    # 9 of the 16 "No Finding" patients also have COVID-19 films: --drop-mixed-patients leaves them out
    with pytest.warns(UserWarning, match=r"9 patients have images of more than one label and are left out "
                                         r"\(drop_mixed_patients=True\), \d+ images: \['173', '223', "):
        kept = hashes.group_frame(frame, cache_dir=real_cache, drop_mixed_patients=True)
    assert kept["patient"].nunique() == frame["patient"].nunique() - 9
    normal = frame[frame["finding"] == "No Finding"]["patient"].unique()
    assert len(normal) == 16 and len(set(normal) - set(kept["patient"])) == 9
