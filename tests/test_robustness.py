"""Hostile-input catalogue: each case must end in a clear error or a reported skip — never a
crash with an unrelated exception, a hang, or a write outside the expected folders.

Running this file prints the catalogue with each case's outcome (``-s`` to see it)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from covidxr import data

HEADER = "patientid,finding,view,modality,folder,filename\n"
CATALOGUE: list[tuple[str, str]] = []


def _record(case, outcome):
    CATALOGUE.append((case, outcome))


@pytest.fixture(scope="module", autouse=True)
def _print_catalogue():
    yield
    if CATALOGUE:
        width = max(len(c) for c, _ in CATALOGUE)
        print("\nhostile-input catalogue:")
        for case, outcome in CATALOGUE:
            print(f"  {case:<{width}}  {outcome[:110]}")


def _dataset(tmp_path, text: bytes | str, *, images=("a.png",)):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.fromarray(np.full((8, 8), 128, np.uint8)).save(root / "images" / name)
    (root / "metadata.csv").write_bytes(text.encode() if isinstance(text, str) else text)
    return root


def _outcome(root, **kwargs):
    """Read and describe what happened: 'error: ...' or 'ok: N rows (warnings)'."""
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            frame = data.read_metadata(root, **kwargs)
            result = f"ok: {len(frame)} rows" + (f" ({len(caught)} warning(s))" if caught else "")
        except (ValueError, FileNotFoundError) as err:
            result = f"{type(err).__name__}: {err}"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before, "wrote into the dataset"
    return result


METADATA_CASES = {
    "missing columns": (HEADER.replace("finding,", "") + "1,PA,X-ray,images,a.png\n", "ValueError: "),
    "extra columns": ("x,y," + HEADER.strip() + ",z\n1,2,1,COVID-19,PA,X-ray,images,a.png,3\n", "ok: 1 rows"),
    "duplicate rows": (HEADER + "1,COVID-19,PA,X-ray,images,a.png\n" * 3, "ok: 1 rows"),
    "non-UTF-8 bytes": (HEADER.encode() + b"1,COVID-19,PA,X-ray,images,a.png\n2,Caf\xe9,PA,X-ray,images,a.png\n",
                        "ok: 1 rows"),
    "quoted newlines": (HEADER + '1,"COVID-19",PA,X-ray,images,"a.png"\n2,"No\nFinding",PA,X-ray,images,a.png\n',
                        "ok: 1 rows"),
    "empty file": ("", "ValueError: "),
    "header only": (HEADER, "ok: 0 rows"),
    "filename with ..": (HEADER + "1,COVID-19,PA,X-ray,images,../a.png\n", "ValueError: "),
    "absolute filename": (HEADER + "1,COVID-19,PA,X-ray,images,/etc/passwd\n", "ValueError: "),
    "folder with ..": (HEADER + "1,COVID-19,PA,X-ray,..,a.png\n", "ValueError: "),
    "blank filename": (HEADER + "1,COVID-19,PA,X-ray,images,\n", "ValueError: "),
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_metadata_cases(tmp_path, case):
    text, expected = METADATA_CASES[case]
    outcome = _outcome(_dataset(tmp_path, text), task=None)
    _record(f"metadata: {case}", outcome)
    assert outcome.startswith(expected), outcome


def test_metadata_symlink_out(tmp_path):
    root = _dataset(tmp_path, HEADER + "1,COVID-19,PA,X-ray,images,link.png\n")
    (tmp_path / "outside.png").write_bytes(b"secret")
    (root / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    outcome = _outcome(root, task=None)
    _record("metadata: symlink out of images/", outcome)
    assert outcome.startswith("ValueError: ") and "resolves outside" in outcome


def test_metadata_100k_rows(tmp_path):
    rows = "".join(f"{i % 5000},{'COVID-19' if i % 3 else 'No Finding'},PA,X-ray,images,a.png\n" for i in range(100_000))
    root = _dataset(tmp_path, HEADER + rows)
    start = time.perf_counter()
    outcome = _outcome(root, task=None)
    elapsed = time.perf_counter() - start
    _record("metadata: 100k rows", f"{outcome} in {elapsed:.1f} s")
    assert outcome.startswith("ok: 1 rows")  # one image listed 100k times: kept once, with a warning
    assert elapsed < 60


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_fuzz_metadata_bytes(tmp_path_factory, blob):
    root = _dataset(tmp_path_factory.mktemp("fz"), HEADER.encode() + blob)
    _outcome(root, task=None, views=None, modality=None)  # must not raise anything else


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=25), st.sampled_from(["PA", "AP", "L", "", "?"]),
                          st.text(max_size=20)), max_size=8))
def test_fuzz_metadata_cells(tmp_path_factory, rows):
    frame = pd.DataFrame(rows, columns=["patientid", "finding", "view", "filename"]).assign(modality="X-ray")
    root = _dataset(tmp_path_factory.mktemp("fz"), frame.to_csv(index=False))
    outcome = _outcome(root, task=None)
    assert outcome.startswith(("ok:", "ValueError", "FileNotFoundError"))


def test_catalogue_is_complete():
    """The catalogue names every hostile metadata case of the reliability issue."""
    needed = {"missing columns", "extra columns", "duplicate rows", "non-UTF-8 bytes", "quoted newlines",
              "empty file", "filename with ..", "absolute filename"}
    assert needed <= set(METADATA_CASES)
