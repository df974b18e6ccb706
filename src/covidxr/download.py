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
from pathlib import Path

REPOSITORY = "https://github.com/ieee8023/covid-chestxray-dataset"
#: A pinned upstream commit (mid-2020 README, flat findings), so that a download is repeatable.
#: Pass ``--ref master`` for the current collection (hierarchical findings; also supported).
DEFAULT_REF = "cec70df07d40383581484c70bb6ada1e6a2fc077"

MANUAL_STEPS = (
    "To place the data by hand: on a machine with internet access, download {url} (or "
    "`git clone {repo}`), copy the folder holding metadata.csv and images/ to {dest}, or point "
    "covidxr at it with --data-dir / COVIDXR_DATA_DIR."
)


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
        force: Replace an existing folder. Without it, a folder that already holds
            ``metadata.csv`` is only verified (no download), and any other non-empty folder is
            an error.

    Returns:
        The verification summary (see :func:`verify`).

    Raises:
        FileExistsError: ``dest`` is non-empty without ``metadata.csv`` and ``force`` is False.
        ConnectionError: The archive could not be fetched (offline); the message says how to
            place the data by hand.
    """
    dest = Path(dest)
    if (dest / "metadata.csv").is_file() and not force:
        # Already downloaded or placed by hand: check it and say so (offline machines too).
        return f"{dest} already holds the collection (pass --force to download again).\n" + verify(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise FileExistsError(
            f"Expected a new or empty folder; pass --force to replace it. Received: dest={str(dest)!r}"
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
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(top, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary.replace(str(top), str(dest))
