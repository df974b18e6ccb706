"""Split groups: patients that share an image (by content hash) are merged into one group, and
with ``group_by="source"`` every source (URL host) becomes part of one group with its patients.
Must not decode images or read files: it takes the per-image hashes as a table and returns frames.

Every split, fold and bootstrap of the project resamples or assigns **groups**, never raw patient
ids: the public collection holds the same radiograph under two patient ids, and a split by
patient id alone puts a copy in training and its twin in test. :func:`assign_groups` adds the
columns ``group`` (the merged split unit) and ``hash`` (the image's exact content hash) to a
frame; the original ``patient`` column is kept.

Two images are duplicates when their exact hashes are equal (the same decoded pixels), or when
their near hashes (256-bit DCT perceptual hashes of a 64×64 grey copy) differ in at most
:data:`NEAR_DISTANCE` bits. Images of very low variance (blank or uniform ones, grey standard
deviation below :data:`MIN_STD` on that copy) are never merged with anything: all blank images
share a hash without being one radiograph. Near pairs are found by multi-index hashing
(:func:`covidxr.data.near.hamming_pairs`): exactly the pairs within the distance, without
comparing all pairs.

:func:`merged_groups` lists the groups of more than one patient and :func:`mixed_label_patients`
the patients (or groups) whose images carry more than one label; :func:`drop_mixed_patients`
leaves the latter out (``--drop-mixed-patients``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .notices import DataWarning
from .near import hamming_pairs

__all__ = ["DUPLICATES", "GROUP_BY", "MIN_STD", "NEAR_BITS", "NEAR_DISTANCE", "UnionFind", "assign_groups",
           "check_group_by", "drop_mixed_patients", "duplicate_pairs", "group_column", "merged_groups",
           "mixed_label_patients", "near_bits", "near_codes", "near_distances",
           "usable_hashes"]

#: What to do with images found twice: ``merge`` their patients into one group (default), ``drop``
#: every copy but the first, or ``keep`` them as they are (with a warning).
DUPLICATES = ("merge", "drop", "keep")
#: The split unit: ``patient`` (patients merged by shared images) or ``source`` (no source in two parts).
GROUP_BY = ("patient", "source")
#: Near-duplicate threshold: at most this many of the 256 perceptual-hash bits may differ. On the
#: 2020 snapshot, copies (the same film re-encoded, re-cropped or re-windowed) differ in 0–22
#: bits, and the closest pair of distinct films in 44 or more.
NEAR_DISTANCE = 24
#: Images whose 64×64 grey copy has a standard deviation below this are never merged.
MIN_STD = 4.0


class UnionFind:
    """Disjoint sets over hashable items (path halving, union by size)."""

    def __init__(self, items=()):
        self.parent, self.size = {}, {}
        for item in items:
            self.add(item)

    def add(self, item):
        if item not in self.parent:
            self.parent[item], self.size[item] = item, 1

    def find(self, item):
        self.add(item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra


def group_column(frame: pd.DataFrame) -> str:
    """The column a split or bootstrap groups by: ``group`` when the frame has one, else ``patient``
    (frames and run files written before groups existed)."""
    return "group" if "group" in frame.columns else "patient"


#: Bits of a near (perceptual) hash: 64 hex digits.
NEAR_BITS = 256


def near_bits(near) -> np.ndarray:
    """64-hex-digit near hashes (n,) to a (n, 256) int32 array of bits; blanks to all zeros."""
    out = np.zeros((len(near), NEAR_BITS), dtype=np.int32)
    for i, text in enumerate(near):
        if isinstance(text, str) and len(text) == NEAR_BITS // 4:
            out[i] = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))
    return out


def near_codes(near) -> np.ndarray:
    """64-hex-digit near hashes (n,) to (n, 32) ``uint8`` packed codes (:func:`near_bits`, packed);
    anything else (blank, another length, not hexadecimal) to all zeros."""
    text = pd.Series(np.asarray(near, dtype=object), dtype=object)
    valid = text.map(lambda v: isinstance(v, str)).to_numpy(bool, copy=True)
    valid[valid] = text[valid].str.fullmatch(f"[0-9a-fA-F]{{{NEAR_BITS // 4}}}").to_numpy(bool)
    out = np.zeros((len(text), NEAR_BITS // 8), dtype=np.uint8)
    if valid.any():
        out[valid] = np.frombuffer(bytes.fromhex("".join(text[valid])), dtype=np.uint8).reshape(-1, NEAR_BITS // 8)
    return out


def near_distances(bits_a: np.ndarray, bits_b: np.ndarray) -> np.ndarray:
    """Hamming distances (n, m) between the rows of two :func:`near_bits` arrays (n, 256) and (m, 256):
    differing bits = ones(a) + ones(b) − 2 × common ones."""
    return bits_a.sum(axis=1)[:, None] + bits_b.sum(axis=1)[None, :] - 2 * (bits_a @ bits_b.T)


def usable_hashes(hashes: pd.DataFrame) -> np.ndarray:
    """Rows (n,) whose hashes may match another image's: readable, and not of very low variance
    (``std`` below :data:`MIN_STD`; an unknown ``std`` counts as usable)."""
    exact = hashes["exact"].fillna("").astype(str).to_numpy()
    std = pd.to_numeric(hashes["std"], errors="coerce").to_numpy(float)
    return (exact != "") & ~(std < MIN_STD)


def duplicate_pairs(hashes: pd.DataFrame, *, max_distance=NEAR_DISTANCE) -> pd.DataFrame:
    """Pairs of rows of ``hashes`` that hold the same image.

    Args:
        hashes: One row per image, shape (n, ...): ``exact`` (hex string, blank when the image
            could not be read), ``near`` (64 hex digits) and ``std`` (grey standard deviation of
            the small copy), as :func:`covidxr.images.hashes.image_hashes` returns.
        max_distance: Near-duplicate threshold in bits (0 disables near matching).

    Returns:
        Columns ``a, b`` (row positions, a < b), ``kind`` (``exact`` or ``near``) and ``distance``.
    """
    exact = hashes["exact"].fillna("").astype(str).to_numpy()
    usable = usable_hashes(hashes)
    rows = []
    index = np.flatnonzero(usable)
    by_exact: dict[str, list] = {}
    for i in index:
        by_exact.setdefault(exact[i], []).append(int(i))
    for members in by_exact.values():
        for j in members[1:]:
            rows.append((members[0], j, "exact", 0))
    if max_distance > 0 and len(index) > 1:
        rows.extend(_near_pairs(near_codes(hashes["near"].to_numpy()[index]), index, exact, int(max_distance)))
    return pd.DataFrame(rows, columns=["a", "b", "kind", "distance"])


def _near_pairs(codes: np.ndarray, index: np.ndarray, exact: np.ndarray, max_distance: int):
    """``(a, b, "near", distance)`` for the rows ``index`` whose packed codes (n, 32) differ in at
    most ``max_distance`` bits and whose exact hashes differ: every such pair, found without
    comparing all pairs (:func:`covidxr.data.near.hamming_pairs`)."""
    a, b, dist = hamming_pairs(codes, max_distance=max_distance)
    ia, ib = index[a], index[b]
    keep = exact[ia] != exact[ib]
    for i, j, d in zip(ia[keep].tolist(), ib[keep].tolist(), dist[keep].tolist()):
        yield i, j, "near", d


def _group_name(members) -> str:
    members = sorted(str(m) for m in members)
    return members[0] if len(members) == 1 else "+".join(members) if len(members) <= 3 \
        else f"{members[0]}+{len(members) - 1} others"


def _merged(frame: pd.DataFrame, pairs: pd.DataFrame) -> pd.Series:
    """Patients joined by the pairs' images (union–find): the group of each row."""
    patients = frame["patient"].astype(str).to_numpy()
    uf = UnionFind(patients)
    for a, b in zip(pairs["a"], pairs["b"]):
        uf.union(patients[a], patients[b])
    members: dict[str, set] = {}
    for p in patients:
        members.setdefault(uf.find(p), set()).add(p)
    names = {root: _group_name(m) for root, m in members.items()}
    return pd.Series([names[uf.find(p)] for p in patients], index=frame.index)


def _by_source(frame: pd.DataFrame, groups: pd.Series) -> pd.Series:
    """Groups joined with their sources: no source, and no patient group, spans two of the result."""
    uf = UnionFind()
    for g, s in zip(groups, frame["source"].astype(str)):
        uf.union(("g", g), ("s", s))
    sources: dict = {}
    for s in frame["source"].astype(str):
        sources.setdefault(uf.find(("s", s)), set()).add(s)
    names = {root: "source:" + _group_name(m) for root, m in sources.items()}
    return pd.Series([names[uf.find(("g", g))] for g in groups], index=frame.index)


def _image_clusters(n: int, pairs: pd.DataFrame) -> np.ndarray:
    """The first row of each row's duplicate cluster."""
    uf = UnionFind(range(n))
    for a, b in zip(pairs["a"], pairs["b"]):
        uf.union(int(a), int(b))
    first: dict = {}
    for i in range(n):
        first.setdefault(uf.find(i), i)
    return np.array([first[uf.find(i)] for i in range(n)], dtype=int)


def check_group_by(frame: pd.DataFrame, group_by) -> None:
    """Refuse an unknown ``group_by``, and ``"source"`` for a frame that records no source (class
    folders, COVID-QU-Ex: every ``source`` cell blank), where it would make one group of everything."""
    if group_by not in GROUP_BY:
        raise ValueError(f"Unknown group_by. Expected one of {list(GROUP_BY)}. Received: group_by={group_by!r}")
    if group_by == "source" and ("source" not in frame.columns or not (
            frame["source"].notna() & frame["source"].astype(str).str.strip().ne("")).any()):
        layout = frame.attrs.get("source", "this dataset's")
        raise ValueError(f"Expected image sources for group_by='source' (--group-by source), but the {layout} layout "
                         f"records none: use group_by='patient'. Received: group_by='source', layout={layout!r}")


def _join_same_patients(patients: np.ndarray, group: np.ndarray, same: pd.DataFrame) -> tuple[np.ndarray, dict]:
    """Groups (n,) joined by confirmed same-patient pairs (``patient_a``, ``patient_b``): the
    patients of a group stay together, each pair's two patients join, and a joined group is
    named after its patients as :func:`_merged` names them. Returns the groups and counts."""
    uf = UnionFind(patients)
    for p, g in zip(patients, group):
        uf.union(("group", g), p)
    present = set(patients)
    applied = joined = 0
    for a, b in zip(same["patient_a"].astype(str), same["patient_b"].astype(str)):
        if a in present and b in present:
            applied += 1
            joined += uf.find(a) != uf.find(b)
            uf.union(a, b)
    if not joined:
        return group, {"pairs": int(len(same)), "applied": applied, "joined": 0}
    members: dict = {}
    for p in patients:
        members.setdefault(uf.find(p), set()).add(p)
    size = {root: len(m) for root, m in members.items()}
    names = {g: (_group_name(members[uf.find(p)]) if size[uf.find(p)] > 1 else g) for p, g in zip(patients, group)}
    return np.array([names[g] for g in group], dtype=object), {"pairs": int(len(same)), "applied": applied,
                                                               "joined": joined}


def assign_groups(frame: pd.DataFrame, hashes: pd.DataFrame, *, duplicates="merge", group_by="patient",
                  max_distance=NEAR_DISTANCE, same_patients=None, pairs=None) -> pd.DataFrame:
    """Add the split unit ``group`` and the content hash ``hash`` to a frame.

    Args:
        frame: One row per image, shape (n, ...), with ``image``, ``patient`` and ``source``.
        hashes: Aligned with ``frame`` (same length and order): ``exact``, ``near``, ``std``
            (see :func:`duplicate_pairs`).
        duplicates: One of :data:`DUPLICATES`.
        group_by: One of :data:`GROUP_BY`.
        max_distance: Near-duplicate threshold in bits.
        same_patients: Confirmed same-patient pairs (columns ``patient_a``, ``patient_b``; see
            :mod:`covidxr.data.same_patients`) whose patients join one group, whatever
            ``duplicates``; a pair with a patient not in ``frame`` joins nothing. None: no pairs.
        pairs: ``duplicate_pairs(hashes, max_distance=max_distance)`` when the caller has them
            (a stored grouping); None finds them.

    Returns:
        A copy of ``frame`` (rows dropped with ``duplicates="drop"``) with ``group`` and ``hash``
        columns; ``attrs["duplicates"]`` holds ``pairs`` (exact, near), ``cross_patient_pairs``,
        ``dropped``, ``same_patients`` (``pairs``, ``applied``: both patients present, ``joined``:
        two groups made one) and ``merged_groups`` (one dict per group of more than one patient:
        ``group, patients, images``, largest first).

    Raises:
        ValueError: An unknown ``duplicates`` or ``group_by``, ``group_by="source"`` without sources
            (:func:`check_group_by`), or ``hashes`` not aligned with ``frame``.
    """
    if duplicates not in DUPLICATES:
        raise ValueError(f"Unknown duplicates. Expected one of {list(DUPLICATES)}. Received: duplicates={duplicates!r}")
    check_group_by(frame, group_by)
    if len(hashes) != len(frame):
        raise ValueError(f"Expected one hash row per frame row ({len(frame)}). Received: len(hashes)={len(hashes)}")
    attrs = dict(frame.attrs)
    frame = frame.reset_index(drop=True)
    hashes = hashes.reset_index(drop=True)
    pairs = duplicate_pairs(hashes, max_distance=max_distance) if pairs is None else pairs
    patients = frame["patient"].astype(str).to_numpy()
    cross = pairs[patients[pairs["a"].to_numpy(int)] != patients[pairs["b"].to_numpy(int)]] if len(pairs) else pairs
    info = {"pairs": {"exact": int((pairs["kind"] == "exact").sum()), "near": int((pairs["kind"] == "near").sum())},
            "cross_patient_pairs": int(len(cross)), "dropped": 0, "mode": duplicates,
            "max_distance": int(max_distance), "merged_groups": []}
    out = frame.assign(hash=hashes["exact"].fillna("").astype(str).to_numpy())
    if duplicates == "drop" and len(pairs):
        keep = _image_clusters(len(frame), pairs) == np.arange(len(frame))
        info["dropped"] = int((~keep).sum())
        warnings.warn(DataWarning(f"{info['dropped']} images are copies of another image of the dataset (same or "
                                  f"nearly the same pixels) and are left out (duplicates='drop'): "
                                  f"{list(frame.loc[~keep, 'image'][:5])}", count=info["dropped"],
                                  what="copies of another image (left out)"), stacklevel=2)
        out = out[keep].reset_index(drop=True)
        group = out["patient"].astype(str)
    elif duplicates == "merge":
        group = _merged(frame, cross)
    else:
        group = out["patient"].astype(str)
        if len(cross):
            warnings.warn(DataWarning(f"{len(cross)} pairs of images under different patient ids hold the same "
                                      "image; kept apart (duplicates='keep'), so a split may put one copy in "
                                      "training and the other in test.", count=len(cross),
                                      what="copies under another patient id (kept apart)"), stacklevel=2)
    out["group"] = group.to_numpy()
    if same_patients is not None and len(same_patients):
        out["group"], info["same_patients"] = _join_same_patients(out["patient"].astype(str).to_numpy(),
                                                                  out["group"].to_numpy(), same_patients)
    if group_by == "source":
        out["group"] = _by_source(out, out["group"]).to_numpy()
    sizes = out.groupby("group").agg(patients=("patient", "nunique"), images=("image", "size"))
    merged = sizes[sizes["patients"] > 1].sort_values(["patients", "images"], ascending=False)
    info["merged_groups"] = [{"group": g, "patients": int(r.patients), "images": int(r.images)}
                             for g, r in merged.iterrows()]
    out.attrs.update(attrs, duplicates=info, group_by=group_by)
    return out


def _label_column(frame: pd.DataFrame) -> str:
    return "label" if "label" in frame.columns else "category"


def _natural(text: str) -> tuple:
    """A sort key for ids: whole numbers in numeric order ("9" before "10"), then the rest as text."""
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def mixed_label_patients(frame: pd.DataFrame, *, by="patient") -> pd.DataFrame:
    """The patients (or split groups) whose images carry more than one label.

    Args:
        frame: One row per image, shape (n, ...), with ``patient``, ``image`` and ``label`` (the
            task's class, or the category when no task is applied; ``category`` is used when
            there is no ``label``); ``group`` when present.
        by: ``"patient"`` or ``"group"``.

    Returns:
        One row per mixed patient (group), in natural id order: ``patient`` (or ``group``),
        ``group`` (or ``patients``: how many), ``labels`` (e.g. ``"covid: 3, normal: 1"``),
        ``images``.

    Raises:
        ValueError: An unknown ``by``, or ``by="group"`` on a frame without a ``group`` column.
    """
    if by not in ("patient", "group"):
        raise ValueError(f"Unknown by. Expected one of ['patient', 'group']. Received: by={by!r}")
    if by not in frame.columns:
        raise ValueError(f"Expected a frame with a {by!r} column. Received: columns={list(frame.columns)}")
    other = "group" if by == "patient" else "patient"
    column, rows = _label_column(frame), []
    keys = frame[by].astype(str)
    labels = frame[column].astype(str).groupby(keys, sort=False).nunique()   # one pass, not a loop per patient
    mixed = keys.isin(labels.index[labels > 1])
    for key, part in frame[mixed].groupby(keys[mixed], sort=False):
        counts = part[column].astype(str).value_counts().sort_index()
        if len(counts) > 1:
            extra = (", ".join(sorted(set(part[other].astype(str)))) if by == "patient"
                     else int(part[other].nunique())) if other in part.columns else ""
            rows.append({by: key, "group" if by == "patient" else "patients": extra,
                         "labels": ", ".join(f"{k}: {v}" for k, v in counts.items()), "images": len(part)})
    rows.sort(key=lambda r: _natural(r[by]))
    out = pd.DataFrame(rows, columns=[by, "group" if by == "patient" else "patients", "labels", "images"])
    return out.drop(columns="group") if by == "patient" and "group" not in frame.columns else out


def drop_mixed_patients(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the images of :func:`mixed_label_patients`, with a warning naming how
    many patients and images were left out and the first few patients; ``attrs["mixed_dropped"]``
    lists those patients."""
    mixed = mixed_label_patients(frame)
    names = list(mixed["patient"])
    out = frame[~frame["patient"].astype(str).isin(names)].reset_index(drop=True)
    if names:
        warnings.warn(DataWarning(f"{len(names)} patients have images of more than one label and are left out "
                                  f"(drop_mixed_patients=True), {len(frame) - len(out)} images: {names[:5]}"
                                  f"{' ...' if len(names) > 5 else ''}", count=len(names),
                                  what="patients with more than one label (left out)"), stacklevel=2)
    out.attrs.update(frame.attrs, mixed_dropped=names)
    return out


def merged_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """The split groups that hold more than one patient (patients joined by a shared image, or
    by a source with ``group_by="source"``), largest first.

    Args:
        frame: A frame with ``group``, ``patient`` and ``image`` columns (shape (n, ...)); a frame
            without ``group`` has no merged groups.

    Returns:
        Columns ``group``, ``patients`` (how many), ``images`` and ``patient_ids`` (comma-separated,
        in natural order), one row per merged group, most patients then most images first.
    """
    columns = ["group", "patients", "images", "patient_ids"]
    if "group" not in frame.columns or not len(frame):
        return pd.DataFrame(columns=columns)
    rows, groups = [], frame["group"].astype(str)
    patients = frame["patient"].astype(str).groupby(groups).nunique()   # one pass: loop over merged groups only
    merged = groups.isin(patients.index[patients > 1])
    for group, part in frame[merged].groupby(groups[merged]):
        patients = sorted(set(part["patient"].astype(str)), key=_natural)
        if len(patients) > 1:
            rows.append({"group": group, "patients": len(patients), "images": len(part),
                         "patient_ids": ", ".join(patients)})
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values(["patients", "images", "group"], ascending=[False, False, True]).reset_index(drop=True)
