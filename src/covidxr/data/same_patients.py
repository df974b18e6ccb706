"""Same patients the hashes miss: confirmed pairs of patient ids that are one patient, read from a
CSV file and merged into one split group (:func:`covidxr.data.groups.assign_groups`), and the
candidate pairs a person reviews to confirm them.
Must not decode images or write files: it reads the pairs file and the dataset's own table.

A same-patients file is a CSV with the columns ``patient_a, patient_b, reason`` (more columns
are allowed and kept, e.g. ``image_a, image_b`` of the images that showed it): each row says that
the two ids are one patient, and why. Every patient id must be one of the dataset's (else an
error lists those that are not); a pair whose patients were filtered out (another view, another
task) merges nothing.

The package ships the confirmed file of the collection's 2020 snapshot
(``same_patient_pairs/covid-chestxray-dataset-2020.csv``, with the review of every candidate pair
beside it in ``covid-chestxray-dataset-2020.review.csv``); ``same_patients="auto"`` uses a shipped
file when the dataset is the collection it was made for: its ``metadata.csv`` lists every image of
the file under the file's patient ids.

:func:`review_pairs` lists the candidates: images of different split groups whose near hashes
are within a review distance (:data:`REVIEW_DISTANCE` bits), too far apart to be merged by the
hashes alone (:data:`covidxr.data.groups.NEAR_DISTANCE`), close enough to be the same film
re-captioned, re-cropped or re-exposed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from .groups import duplicate_pairs
from .readers import detect_layout, read_csv
from .tasks import none_if_blank

__all__ = ["REVIEW_DISTANCE", "REVIEW_SUFFIX", "SAME_PATIENT_COLUMNS", "SHIPPED_DIR", "dataset_patients",
           "mark_reviewed", "read_same_patients", "recognised_file", "resolve_same_patients", "review_pairs"]

#: The columns a same-patients file must have.
SAME_PATIENT_COLUMNS = ("patient_a", "patient_b", "reason")
#: The confirmed files shipped with the package, one per known collection snapshot.
SHIPPED_DIR = Path(__file__).resolve().parent / "same_patient_pairs"
#: The review of every candidate pair beside a shipped file (``<name>.review.csv``: ``decision`` and ``reason``).
REVIEW_SUFFIX = ".review.csv"
#: Candidate pairs for review: near hashes at most this many of 256 bits apart (the 2020 snapshot's
#: one film filed under two patient ids differs in 44–46 bits; merging stops at 24).
REVIEW_DISTANCE = 64


def read_same_patients(path) -> pd.DataFrame:
    """Read and check a same-patients file.

    Args:
        path: A CSV file with the columns :data:`SAME_PATIENT_COLUMNS` (others are kept).

    Returns:
        One row per pair, ids as stripped strings; ``attrs["file"]`` and ``attrs["sha256"]`` name
        the file.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A missing column, a blank id or reason, or a pair of one id with itself.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected a same-patients CSV file with the columns "
                                f"{', '.join(SAME_PATIENT_COLUMNS)}. Received: same_patients={str(path)!r}")
    table = read_csv(path)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in SAME_PATIENT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"Expected the columns {', '.join(SAME_PATIENT_COLUMNS)} in the same-patients file {path}; "
                         f"{missing} are missing. Received: columns={list(table.columns)}")
    table = table.apply(lambda column: column.str.strip())
    blank = table.index[(table[list(SAME_PATIENT_COLUMNS)] == "").any(axis=1)]
    if len(blank):
        rows = [int(i) + 2 for i in blank[:5]]  # line numbers
        raise ValueError(f"Expected a patient_a, a patient_b and a reason on every row of the same-patients file "
                         f"{path}; {len(blank)} rows have a blank one. Received: rows={rows}")
    same = table.index[table["patient_a"] == table["patient_b"]]
    if len(same):
        raise ValueError(f"Expected two different patient ids per row of the same-patients file {path}. "
                         f"Received: rows={[int(i) + 2 for i in same[:5]]} (line numbers)")
    table.attrs.update(file=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    return table


def _metadata_rows(root: Path) -> set:
    """``(patientid, filename)`` of every row of a collection's ``metadata.csv``."""
    meta = read_csv(root / "metadata.csv")
    meta.columns = [str(c).strip() for c in meta.columns]
    if not {"patientid", "filename"} <= set(meta.columns):
        return set()
    return set(zip(meta["patientid"].str.strip(), meta["filename"].str.strip()))


def recognised_file(root) -> Path | None:
    """The shipped same-patients file made for the collection at ``root``: one whose every
    ``(patient_a, image_a)`` and ``(patient_b, image_b)`` is a ``(patientid, filename)`` row of its
    ``metadata.csv``; None when no shipped file fits (or ``root`` has no ``metadata.csv``)."""
    root = Path(root)
    if not (root / "metadata.csv").is_file():
        return None
    rows = _metadata_rows(root)
    for path in sorted(SHIPPED_DIR.glob("*.csv")):
        table = read_csv(path)
        if path.name.endswith(REVIEW_SUFFIX) or not {"image_a", "image_b"} <= set(table.columns) or not len(table):
            continue  # the review of every candidate, not the confirmed pairs
        listed = {(r.patient_a, Path(r.image_a).name) for r in table.itertuples()} \
            | {(r.patient_b, Path(r.image_b).name) for r in table.itertuples()}
        if listed <= rows:
            return path
    return None


def dataset_patients(root, layout, *, patient_col="patient") -> set | None:
    """Every patient id a dataset's own table holds, whatever the filters (views, modality, task):
    ``metadata.csv``'s ``patientid`` or a manifest's patient column; None for other layouts."""
    root = Path(root)
    if layout == "metadata" and (root / "metadata.csv").is_file():
        return {p for p, _ in _metadata_rows(root)}
    if layout == "manifest" and root.is_file() and patient_col:
        table = read_csv(root)
        table.columns = [str(c).strip() for c in table.columns]
        if patient_col in table.columns:
            return set(table[patient_col].str.strip())
    return None


def resolve_same_patients(option="auto", *, data_dir=None, layout="auto", patient_col="patient",
                          patients=()) -> tuple[pd.DataFrame | None, dict]:
    """The confirmed same-patient pairs an option names, checked against the dataset.

    Args:
        option: ``"auto"`` (or None): the shipped file made for this collection, if any
            (:func:`recognised_file`); ``"none"`` (or blank): no pairs; else a file path
            (:func:`read_same_patients`).
        data_dir, layout, patient_col: The dataset (as :func:`covidxr.data.load_dataset`).
        patients: The patient ids of the frame read; the ids checked against when the layout has
            no table of its own (:func:`dataset_patients` gives None).

    Returns:
        ``(pairs or None, record)``; the record (for ``config.json``) holds ``option``, ``file`` (the
        name of a shipped file, else the path given), ``shipped``, ``sha256`` and ``pairs`` (how many).

    Raises:
        FileNotFoundError, ValueError: As :func:`read_same_patients`; a patient id of the file that
            the dataset does not hold (all such ids are listed).
    """
    option = "auto" if option is None else str(option)
    record = {"option": option, "file": None, "shipped": False, "sha256": None, "pairs": 0}
    if none_if_blank(option) is None:
        return None, record
    root, layout = detect_layout(data_dir, layout=layout)
    if option.strip().lower() == "auto":
        path = recognised_file(root) if layout == "metadata" else None
        if path is None:
            return None, record
    else:
        path = Path(option).expanduser()
    pairs = read_same_patients(path)
    known = dataset_patients(root, layout, patient_col=patient_col)
    known = set(map(str, patients)) if known is None else known
    ids = list(dict.fromkeys(p for row in zip(pairs["patient_a"], pairs["patient_b"]) for p in row))
    unknown = [p for p in ids if p not in known]
    if unknown:
        raise ValueError(f"Expected every patient id of the same-patients file {path} in the dataset {root}; "
                         f"{len(unknown)} are not. Received: unknown={unknown[:20]}")
    shipped = path.resolve().parent == SHIPPED_DIR
    record.update(file=path.name if shipped else str(path), shipped=shipped, sha256=pairs.attrs["sha256"],
                  pairs=int(len(pairs)))
    return pairs, record


def mark_reviewed(pairs: pd.DataFrame, record: dict | None) -> pd.DataFrame:
    """Candidate pairs (:func:`review_pairs`) with a ``review`` column: the ``decision`` the review
    file beside the same-patients file in use (``<stem>.review.csv``: ``image_a, image_b, decision,
    reason``) gives the pair, in either order, or ``""`` for a pair not reviewed yet.

    Args:
        pairs: :func:`review_pairs`' table.
        record: ``attrs["same_patients"]`` of the grouped frame (:func:`resolve_same_patients`' record);
            None or no file: every pair is unreviewed.
    """
    out = pairs.assign(review="")
    name = (record or {}).get("file")
    if not name or not len(out):
        return out
    path = SHIPPED_DIR / name if record.get("shipped") else Path(name)
    review = path.with_name(path.name[:-len(path.suffix)] + REVIEW_SUFFIX)
    if not review.is_file():
        return out
    table = read_csv(review)
    if not {"image_a", "image_b", "decision"} <= set(table.columns):
        return out
    decided = {frozenset((a.strip(), b.strip())): d.strip() for a, b, d in
               zip(table["image_a"], table["image_b"], table["decision"])}
    out["review"] = [decided.get(frozenset((a, b)), "") for a, b in zip(out["image_a"], out["image_b"])]
    return out


def review_pairs(frame: pd.DataFrame, hashes: pd.DataFrame, *, max_distance=REVIEW_DISTANCE) -> pd.DataFrame:
    """Candidate same-patient pairs: images of different split groups whose hashes are at most
    ``max_distance`` bits apart (:func:`covidxr.data.groups.duplicate_pairs`), closest first.

    Args:
        frame: A grouped frame (``image``, ``patient``, ``group``), shape (n, ...).
        hashes: Aligned with ``frame``: ``exact``, ``near``, ``std``.
        max_distance: The review distance in bits (of 256).

    Returns:
        Columns ``a, b`` (row positions), ``image_a, image_b, patient_a, patient_b, group_a,
        group_b, label_a, label_b, kind, distance``.

    Raises:
        ValueError: ``hashes`` not aligned with ``frame``, or a negative ``max_distance``.
    """
    if len(hashes) != len(frame):
        raise ValueError(f"Expected one hash row per frame row ({len(frame)}). Received: len(hashes)={len(hashes)}")
    if int(max_distance) < 0:
        raise ValueError(f"Expected a review distance >= 0 bits. Received: max_distance={max_distance!r}")
    columns = ["a", "b", "image_a", "image_b", "patient_a", "patient_b", "group_a", "group_b", "label_a",
               "label_b", "kind", "distance"]
    pairs = duplicate_pairs(hashes.reset_index(drop=True), max_distance=int(max_distance))
    if not len(pairs):
        return pd.DataFrame(columns=columns)
    frame = frame.reset_index(drop=True)
    label = "label" if "label" in frame.columns else "category"
    group = frame["group" if "group" in frame.columns else "patient"].astype(str).to_numpy()
    a, b = pairs["a"].to_numpy(int), pairs["b"].to_numpy(int)
    keep = group[a] != group[b]
    pairs, a, b = pairs[keep], a[keep], b[keep]
    out = pd.DataFrame({"a": a, "b": b})
    for column, name in (("image", "image"), ("patient", "patient"), ("group", "group"), (label, "label")):
        values = frame[column].astype(str).to_numpy() if column in frame.columns else group
        out[f"{name}_a"], out[f"{name}_b"] = values[a], values[b]
    out["kind"], out["distance"] = pairs["kind"].to_numpy(), pairs["distance"].to_numpy(int)
    return out.sort_values(["distance", "image_a", "image_b"]).reset_index(drop=True)[columns]
