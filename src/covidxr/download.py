"""``covidxr download``: fetch the public COVID-19 image data collection (github.com/ieee8023/covid-chestxray-dataset).
Must not leave a half-written dataset: it unpacks beside the target and renames only what passed the checks.

The archive of one commit is downloaded with ``keras.utils.get_file`` (progress bar, cached
under the destination's parent in ``.downloads/``), unpacked into a temporary folder next to
the destination, checked, and renamed into place — a failed download never leaves a
half-written dataset behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from .atomic import write_json

REPOSITORY = "https://github.com/ieee8023/covid-chestxray-dataset"
#: A pinned upstream commit (mid-2020 README, flat findings), so that a download is repeatable.
#: Pass ``--ref master`` for the current collection (hierarchical findings; also supported).
DEFAULT_REF = "cec70df07d40383581484c70bb6ada1e6a2fc077"

MANUAL_STEPS = (
    "To place the data by hand: on a machine with internet access, download {url} (or "
    "`git clone {repo}`), copy the folder holding metadata.csv and images/ to {dest}, or point "
    "covidxr at it with --data-dir / COVIDXR_DATA_DIR."
)


#: The file a download writes into the dataset folder (which ``--force`` may then replace).
MARKER = ".covidxr-download.json"


def looks_downloaded(folder) -> bool:
    """Whether ``folder`` holds a previous download (covidxr's :data:`MARKER`) or a collection
    (``metadata.csv``): the only folders ``force`` replaces."""
    folder = Path(folder)
    return (folder / MARKER).is_file() or (folder / "metadata.csv").is_file()


def archive_url(ref: str) -> str:
    """The URL of the zip archive of ``ref`` (a commit, tag or branch)."""
    return f"{REPOSITORY}/archive/{ref}.zip"


def _safe_extract(archive: Path, into: Path) -> Path:
    """Unpack a zip archive, refusing members that would land outside ``into``; return the
    single top-level folder the archive holds (or ``into``)."""
    into = into.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = (into / member.filename).resolve()
            if target != into and into not in target.parents:
                raise ValueError(
                    f"Expected archive members inside the target folder. Received: member={member.filename!r}"
                )
        zf.extractall(into)
    tops = [p for p in into.iterdir() if not p.name.startswith(".")]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else into


def verify(root) -> str:
    """Check a downloaded or hand-placed collection and describe it.

    Args:
        root: The collection folder (``metadata.csv`` + ``images/``).

    Returns:
        A short multi-line summary with the counts.

    Raises:
        FileNotFoundError: No ``metadata.csv``.
        ValueError: ``metadata.csv`` does not parse or lists no image that exists.
    """
    from .data import read_metadata, summary_table

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        everything = read_metadata(root, task=None, modality=None, views=None)
        xrays = read_metadata(root, task=None)
    if len(everything) == 0:
        raise ValueError(f"Expected metadata.csv to list images that exist. Received: root={str(root)!r}")
    missing = everything.attrs.get("missing_files", 0)
    lines = [
        f"dataset at {root}: {len(everything)} labelled images on disk (all modalities and views), "
        f"{missing} listed images missing",
        "frontal X-rays:",
        summary_table(xrays),
    ]
    lines += [f"note: {w.message}" for w in caught if "metadata rows" in str(w.message)][:1]
    return "\n".join(lines)


def download(dest, *, ref: str = DEFAULT_REF, force: bool = False) -> str:
    """Download the collection at ``ref`` into ``dest`` and verify it.

    Args:
        dest: Target folder (must not exist unless ``force``).
        ref: Upstream commit, tag or branch.
        force: Download again and replace an existing folder, but only one that holds a
            previous download (:func:`looks_downloaded`). Without it, a folder that already holds
            ``metadata.csv`` is only verified (no download), and any other non-empty folder is
            an error.

    Returns:
        The verification summary (see :func:`verify`).

    Raises:
        FileExistsError: ``dest`` is non-empty without ``metadata.csv`` and ``force`` is False,
            or (also with ``force``) it does not look like a previous download.
        NotADirectoryError: ``dest`` is a file.
        ConnectionError: The archive could not be fetched (offline); the message says how to
            place the data by hand.
    """
    dest = Path(dest)
    if (dest / "metadata.csv").is_file() and not force:
        # Already downloaded or placed by hand: check it and say so (offline machines too).
        return f"{dest} already holds the collection (pass --force to download again).\n" + verify(dest)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"Expected a folder for the dataset; a file is in the way. Received: dest={str(dest)!r}")
    if dest.exists() and any(dest.iterdir()) and not (force and looks_downloaded(dest)):
        raise FileExistsError(
            "Expected a new or empty folder, or with --force one that holds a previous download (metadata.csv "
            f"or {MARKER}); " + ("this one does not, so nothing is removed" if force else "pass --force to replace it")
            + f". Received: dest={str(dest)!r}"
        )
    url = archive_url(ref)
    dest.parent.mkdir(parents=True, exist_ok=True)
    import keras

    try:
        archive = keras.utils.get_file(
            fname=f"covid-chestxray-dataset-{ref}.zip", origin=url,
            cache_dir=str(dest.parent.resolve()), cache_subdir=".downloads",
        )
    except Exception as err:  # keras raises a bare Exception on URL errors
        raise ConnectionError(
            f"Could not download the dataset ({err}). "
            + MANUAL_STEPS.format(url=url, repo=REPOSITORY, dest=dest)
            + f" Received: url={url!r}"
        ) from err
    work = Path(tempfile.mkdtemp(prefix=".covidxr-download-", dir=dest.parent))
    try:
        try:
            top = _safe_extract(Path(archive), work)
        except zipfile.BadZipFile as err:
            os.remove(archive)
            raise ValueError(f"Expected a zip archive; the download is damaged and was removed. "
                             f"Received: archive={archive!r}") from err
        summary = verify(top)
        write_json(top / MARKER, {"url": url, "ref": ref,
                                  "downloaded": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(top, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary.replace(str(top), str(dest))
