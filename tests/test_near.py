"""Tests for the near-duplicate search at scale: covidxr.data.near (multi-index hashing, exact by
the pigeonhole principle, against comparing all pairs), the duplicate pairs stored beside the hash
index, hash index entries that are validated and keyed by content, and hashing / caching on
several processes giving the same result as on one."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxr.data import groups, near
from covidxr.images import build_cache, hashes, pool


def _brute(packed, r):
    """All pairs within ``r`` bits, comparing every pair (the definition)."""
    bits = np.unpackbits(packed, axis=1).astype(np.int64)
    d = groups.near_distances(bits, bits)
    a, b = np.nonzero(np.triu(d <= r, 1))
    return a, b, d[a, b]


def _clustered(rng, n, *, prototypes=6):
    """Codes in tight and loose clusters around a few prototypes, with exact copies and biased bits
    (as a radiograph's hash has): the hard case for multi-index hashing."""
    proto = rng.random((prototypes, 256)) < rng.uniform(0.05, 0.95, 256)
    bits = proto[rng.integers(prototypes, size=n)]
    flip = rng.random((n, 256)) < rng.choice([0.0, 0.01, 0.04, 0.1, 0.3], size=(n, 1))
    return np.packbits(bits ^ flip, axis=1)


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_hamming_pairs_are_exactly_the_brute_force_pairs(kind):
    rng = np.random.default_rng(7)
    packed = rng.integers(0, 256, (300, 32), dtype=np.uint8) if kind == "random" else _clustered(rng, 300)
    if kind == "random":   # a few near copies, so there is something to find
        packed[150:200] = np.packbits(np.unpackbits(packed[:50], axis=1)
                                      ^ (rng.random((50, 256)) < 0.08), axis=1)
    for r in (0, 1, 5, 6, 13, 24, 25, 40, 64):
        want = _brute(packed, r)
        for method in ("mih", "flat"):
            got = near.hamming_pairs(packed, max_distance=r, method=method)
            assert all(np.array_equal(g, w) for g, w in zip(got, want)), (kind, r, method)
    assert len(want[0]) > 0


def test_mih_plan_satisfies_the_pigeonhole_bound():
    for r in range(0, 65):
        m, t = near.mih_plan(r)
        assert m * (t + 1) > r and -(-256 // m) <= 62


def test_hamming_pairs_rejects_bad_options():
    codes = np.zeros((3, 32), np.uint8)
    with pytest.raises(ValueError, match=r"Unknown method\. Expected one of .*Received: method='all'"):
        near.hamming_pairs(codes, max_distance=3, method="all")
    with pytest.raises(ValueError, match=r"Expected max_distance >= 0\. Received: max_distance=-1"):
        near.hamming_pairs(codes, max_distance=-1)
    with pytest.raises(ValueError, match=r"Expected uint8 codes of shape \(n, k\*8\)\. Received: shape=\(3, 5\)"):
        near.hamming_pairs(np.zeros((3, 5), np.uint8), max_distance=3)


def _hash_table(packed, rng):
    n = len(packed)
    exact = [f"{i:064x}" for i in range(n)]
    for i in rng.choice(n, 10, replace=False):   # some exact copies
        exact[i] = exact[(i + 1) % n]
    std = np.where(rng.random(n) < 0.05, 1.0, 30.0)   # some blank images, never merged
    return pd.DataFrame({"exact": exact, "near": [c.tobytes().hex() for c in packed], "std": std})


def _old_duplicate_pairs(table, max_distance):
    """The all-pairs definition (the code this search replaced), for comparison."""
    exact = table["exact"].to_numpy()
    index = np.flatnonzero(groups.usable_hashes(table))
    rows, by = [], {}
    for i in index:
        by.setdefault(exact[i], []).append(int(i))
    rows += [(m[0], j, "exact", 0) for m in by.values() for j in m[1:]]
    a, b, d = _brute(groups.near_codes(table["near"].to_numpy()[index]), max_distance)
    rows += [(int(index[i]), int(index[j]), "near", int(k)) for i, j, k in zip(a, b, d) if exact[index[i]] != exact[index[j]]]
    return pd.DataFrame(rows, columns=["a", "b", "kind", "distance"])


@pytest.mark.parametrize("max_distance", [24, 64])
def test_duplicate_pairs_equal_the_all_pairs_frame(monkeypatch, max_distance):
    monkeypatch.setattr(near, "FLAT_UNTIL", 0)   # the multi-index search even on a small table
    rng = np.random.default_rng(1)
    table = _hash_table(_clustered(rng, 400), rng)
    table.loc[3, "near"] = "not hex" + "0" * 57   # invalid: all zeros, as a blank
    assert groups.duplicate_pairs(table, max_distance=max_distance).equals(_old_duplicate_pairs(table, max_distance))


def _images(root, n, *, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = (rng.random((24, 20)) * 255).astype(np.uint8) if i % 9 else np.full((24, 20), 9, np.uint8)
        path = root / f"im{i}.png"
        Image.fromarray(img).save(path)
        rows.append({"image": f"im{i}.png", "path": str(path), "patient": str(i // 2)})
    rows[-1]["path"] = str(root / "missing.png")
    return pd.DataFrame(rows)


def test_pairs_are_stored_beside_the_index_and_reused(tmp_path, monkeypatch):
    frame = _images(tmp_path / "data", 6)
    shutil_copy = (tmp_path / "data" / "im1.png").read_bytes()
    (tmp_path / "data" / "im2.png").write_bytes(shutil_copy)   # an exact copy: patients 0 and 1 merge
    cache = tmp_path / "cache"
    first = hashes.group_frame(frame, cache_dir=cache)
    stored = sorted((cache / "hashes").glob("pairs-*.csv"))
    assert len(stored) == 1 and first["group"].nunique() == 2
    monkeypatch.setattr(hashes, "duplicate_pairs", lambda *a, **k: pytest.fail("searched again"))
    assert hashes.group_frame(frame, cache_dir=cache).equals(first)
    stored[0].write_text("a,b\n")   # damaged: found again, with a warning naming it
    monkeypatch.undo()
    with pytest.warns(UserWarning, match=r"duplicate pairs file .*pairs-.*\.csv cannot be read"):
        assert hashes.group_frame(frame, cache_dir=cache).equals(first)
    hashes.group_frame(frame, cache_dir=cache, max_distance=5)   # another distance: another file
    assert len(list((cache / "hashes").glob("pairs-*.csv"))) == 2


@pytest.fixture
def counted(monkeypatch):
    names = []
    real = hashes.load_radiograph

    def counting(path, *args, **kwargs):
        names.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(hashes, "load_radiograph", counting)
    return names


def test_invalid_index_entry_is_rehashed_with_a_warning_naming_the_index(tmp_path, counted):
    frame = _images(tmp_path / "data", 4)
    cache = tmp_path / "cache"
    first = hashes.image_hashes(frame, cache_dir=cache)
    index = cache / "hashes" / "index.csv"
    table = pd.read_csv(index, dtype=str, keep_default_na=False)
    table.loc[0, "near"] = "zz" + table.loc[0, "near"][2:]   # non-hex: fromhex() failed on this
    table.loc[1, "exact"] = table.loc[1, "exact"][:-1]        # one digit short
    table.to_csv(index, index=False)
    counted.clear()
    with pytest.warns(UserWarning, match=r"The image hash index .*index\.csv holds 2 invalid entries"):
        again = hashes.image_hashes(frame, cache_dir=cache)
    assert again.equals(first) and sorted(counted) == sorted(os.path.basename(p) for p in table["path"][:2])
    counted.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hashes.group_frame(frame, cache_dir=cache)   # repaired: no warning, nothing decoded
    assert counted == []


def test_replaced_file_with_the_same_size_and_time_is_rehashed(tmp_path, counted):
    frame = _images(tmp_path / "data", 4)
    cache = tmp_path / "cache"
    first = hashes.image_hashes(frame, cache_dir=cache)
    a, b = frame["path"].iloc[1], frame["path"].iloc[2]
    stat = os.stat(a)
    data_b = open(b, "rb").read()
    assert len(data_b) == stat.st_size   # same dimensions, random pixels: same PNG size
    open(a, "wb").write(data_b)
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # the index's stamp is unchanged
    counted.clear()
    again = hashes.image_hashes(frame, cache_dir=cache)
    assert counted == ["im1.png"] and again["exact"].iloc[1] == first["exact"].iloc[2] != first["exact"].iloc[1]


def test_workers_give_the_same_hashes_and_cache_as_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "MIN_POOL_ITEMS", 4)
    frame = _images(tmp_path / "data", 40).iloc[:39]
    frame.loc[5, "path"] = str(tmp_path / "data" / "missing.png")
    ones = hashes.image_hashes(frame, cache_dir=tmp_path / "c1", workers=1)
    twos = hashes.image_hashes(frame, cache_dir=tmp_path / "c2", workers=2)
    assert ones.equals(twos) and (ones["exact"] != "").sum() == 38
    with pytest.warns(UserWarning, match=r"missing\.png"):
        c1 = build_cache(frame, image_size=16, cache_dir=tmp_path / "c1", workers=1, progress=False)
    with pytest.warns(UserWarning, match=r"missing\.png"):
        c2 = build_cache(frame, image_size=16, cache_dir=tmp_path / "c2", workers=2, progress=False)
    assert np.array_equal(c1.images, c2.images) and c1.rows.equals(c2.rows) and c1.skipped == c2.skipped


def test_resolve_workers():
    assert pool.resolve_workers(3) == 3 and pool.resolve_workers(None) >= 1 == pool.resolve_workers(1)
    with pytest.raises(ValueError, match=r"Expected workers to be a whole number >= 1 .*Received: workers=-2"):
        pool.resolve_workers(-2)


@pytest.mark.realdata
def test_real_snapshot_pairs_equal_the_all_pairs_definition(real_data, real_cache, monkeypatch):
    from covidxr.data import load_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = load_dataset(real_data, task=None, views="all")
        table = hashes.image_hashes(frame, cache_dir=real_cache).reset_index(drop=True)
    monkeypatch.setattr(near, "FLAT_UNTIL", 0)   # the multi-index search, not the small-set shortcut
    for r in (24, 64):
        assert groups.duplicate_pairs(table, max_distance=r).equals(_old_duplicate_pairs(table, r))


def test_a_fifo_is_not_opened_for_its_digest(tmp_path):
    frame = _images(tmp_path / "data", 2)
    fifo = tmp_path / "data" / "pipe.png"
    os.mkfifo(fifo)
    frame.loc[1, "path"] = str(fifo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hashes.image_hashes(frame, cache_dir=tmp_path / "cache")   # would block on open()
    assert out["exact"].iloc[0] != "" and out.iloc[1].tolist() == ["", "", 0.0]
