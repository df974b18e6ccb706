"""Tests for covidxr.data.tasks' label normalisation: one reading of a label in every layout
(metadata, class folders, manifest), and a warning whenever a spelling is read through it."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxr import data
from covidxr.data import tasks

#: Spellings of COVID-19 that the metadata layout read as another finding before normalisation.
COVID_SPELLINGS = ["COVID\u201019", "COVID 19", "COVID-19; ARDS", "COVID-19\u200b", "SARS-CoV-2"]
#: Two more: a full-width spelling and a non-breaking space.
MORE = ["\uff23\uff2f\uff36\uff29\uff24\uff0d\uff11\uff19", "COVID\u00a019", "Pneumonia/Viral/SARS\u2011CoV\u20112"]


@pytest.mark.parametrize("spelling", COVID_SPELLINGS + MORE)
def test_covid_spellings_are_covid_as_findings_and_aliases(spelling):
    assert tasks.normalise_label(spelling).split("/")[-1].split(",")[0] == "COVID-19"
    assert data.finding_category(spelling) == "covid"
    assert data.alias_category(spelling) == "covid"


@pytest.mark.parametrize("text, expected", [
    ("COVID-19, ARDS", "COVID-19, ARDS"), ("COVID-19 ;ARDS", "COVID-19, ARDS"), ("No_Finding", "No Finding"),
    ("Pneumonia / Viral / COVID-19", "Pneumonia/Viral/COVID-19"), ("Streptococcus", "Streptococcus"),
    (np.nan, ""), (None, ""), ("  todo\u200b ", "todo"),
])
def test_normalise_label(text, expected):
    assert tasks.normalise_label(text) == expected


def test_unchanged_findings_keep_their_class():
    for finding, category in [("No Finding", "normal"), ("no finding", "normal"), ("Streptococcus", "other"),
                              ("SARS", "other"), ("todo", None), ("todo\u200b", None), ("covid-19", "covid")]:
        assert data.finding_category(finding) == category, finding
    for alias, category in [("no_finding", "normal"), ("lung_opacity", "other"), ("non-covid", "other"),
                            ("Non COVID", "other"), ("covid_19", "covid"), ("xyz", None)]:
        assert data.alias_category(alias) == category, alias


def test_warn_normalised_names_spellings_and_rows():
    values = ["COVID-19", "COVID-19, ARDS", "SARS-CoV-2", "SARS-CoV-2", "COVID 19", "covid19", "todo"]
    with pytest.warns(UserWarning, match=r"3 label spellings of metadata.csv were read through label normalisation"
                                         r".*'COVID 19' -> 'COVID-19' \(1 rows\)"
                                         r".*'SARS-CoV-2' -> 'COVID-19' \(2 rows\)"):
        changed = tasks.warn_normalised(values, source="metadata.csv")
    assert set(changed) == {"SARS-CoV-2", "COVID 19", "covid19"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the aliases of a folder or manifest are read as they are
        assert tasks.warn_normalised(["covid19", "SARS-CoV-2", "no_finding", "COVID-19"], source="m",
                                     aliases=True) == {}


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(path)


def _labels_by_layout(tmp_path, spelling):
    """The category of one ``spelling`` image (beside a plain COVID-19 and a No Finding image) as
    the metadata layout, the class-folder layout and a manifest read it."""
    meta = tmp_path / "meta"
    rows = []
    for i, finding in enumerate([spelling, "COVID-19", "No Finding"]):
        _image(meta / "images" / f"{i}.png")
        rows.append({"patientid": str(i), "finding": finding, "filename": f"{i}.png", "view": "PA",
                     "modality": "X-ray"})
    pd.DataFrame(rows).to_csv(meta / "metadata.csv", index=False, encoding="utf-8")
    folders = tmp_path / "folders"
    for i, name in enumerate([spelling, "normal"]):
        _image(folders / name / f"{i}.png")
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"path": [f"meta/images/{i}.png" for i in range(3)], "label": [spelling, "COVID-19", "normal"],
                  "patient": ["a", "b", "c"]}).to_csv(manifest, index=False, encoding="utf-8")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layout, root in (("metadata", meta), ("folders", folders), ("manifest", manifest)):
            frame = data.load_dataset(root, task=None, layout=layout)
            out[layout] = frame.loc[frame["finding"] == spelling, "category"].tolist()
    return out


@pytest.mark.parametrize("spelling", COVID_SPELLINGS)
def test_every_layout_reads_covid_spellings_as_covid(tmp_path, spelling):
    assert _labels_by_layout(tmp_path, spelling) == {"metadata": ["covid"], "folders": ["covid"],
                                                     "manifest": ["covid"]}


def test_metadata_layout_warns_about_normalised_findings(tmp_path):
    meta = tmp_path / "meta"
    rows = []
    for i, finding in enumerate(["SARS-CoV-2", "COVID\u201019", "COVID-19", "No Finding", "todo", "todo"]):
        _image(meta / "images" / f"{i}.png")
        rows.append({"patientid": str(i), "finding": finding, "filename": f"{i}.png", "view": "PA",
                     "modality": "X-ray"})
    pd.DataFrame(rows).to_csv(meta / "metadata.csv", index=False, encoding="utf-8")
    with pytest.warns(UserWarning, match=r"2 label spellings of metadata.csv were read through label normalisation"):
        frame = data.read_metadata(meta, task="covid-vs-rest")
    assert frame["label"].tolist() == ["covid", "covid", "covid", "non-covid"]
    assert frame.attrs["unlabelled_findings"] == {"todo": 2}
