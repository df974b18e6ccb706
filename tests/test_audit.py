"""covidxr.audit: file properties without pixels, and the shortcut flag on synthetic data whose
label is (or is not) encoded in the file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxr import audit
from covidxr.data import load_dataset

NB = 200


def write_dataset(root: Path, *, covid_format, other_format, patients=20, per_patient=2, seed=0):
    """A metadata-layout dataset: half the patients COVID-19. Every file is an L-mode image of
    one size, so format is the only property that can differ between classes."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(patients):
        covid = p % 2 == 0
        ext = covid_format if covid else other_format
        for i in range(per_patient):
            name = f"p{p:02d}_{i}.{ext}"
            pixels = rng.integers(0, 255, (40, 48), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(root / "images" / name)
            rows.append({"patientid": f"{p}", "finding": "COVID-19" if covid else "No Finding",
                         "view": "PA", "modality": "X-ray", "folder": "images", "filename": name})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_file_properties_reads_headers(tmp_path):
    specs = {"rgb.jpg": ("RGB", 24), "grey.png": ("L", 8), "pal.png": ("P", 8), "alpha.png": ("RGBA", 32),
             "deep.png": ("I;16", 16)}
    paths = []
    for name, (mode, _) in specs.items():
        grey = Image.fromarray(np.full((30, 50), 100, np.uint8), mode="L")
        img = Image.fromarray(np.full((30, 50), 25700, np.uint16)) if mode == "I;16" else grey.convert(mode)
        img.save(tmp_path / name)
        paths.append(tmp_path / name)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    props = audit.file_properties(paths + [tmp_path / "bad.png"])
    assert list(props.columns) == ["format", "mode", "width", "height", "bit_depth", "readable"]
    assert list(props["format"][:5]) == ["JPEG", "PNG", "PNG", "PNG", "PNG"]
    assert list(props["mode"][:5]) == [m for m, _ in specs.values()]
    assert list(props["bit_depth"][:5]) == [b for _, b in specs.values()]
    assert (props["width"][:5] == 50).all() and (props["height"][:5] == 30).all()
    assert props["readable"].tolist() == [True] * 5 + [False]
    assert props["format"].iloc[-1] == "unreadable" and np.isnan(props["width"].iloc[-1])


@pytest.mark.parametrize("model", ["gradient-boosting", "logistic-regression"])
def test_audit_flags_label_encoded_in_format(tmp_path, model):
    root = write_dataset(tmp_path / "leaky", covid_format="png", other_format="jpg")
    frame = load_dataset(root, task="covid-vs-normal")
    result = audit.audit_dataset(frame, model=model, n_bootstrap=NB)
    assert result["auroc"]["value"] > 0.95
    assert result["flagged"]
    report = audit.audit_report(result, data=str(root))
    assert "WARNING" in report and "shortcut" in report
    assert result["crosstabs"]["format"].loc["PNG", "covid"] == 20
    assert result["crosstabs"]["format"].loc["JPEG", "normal"] == 20


def test_audit_does_not_flag_when_files_look_alike(tmp_path):
    root = write_dataset(tmp_path / "clean", covid_format="png", other_format="png")
    frame = load_dataset(root, task="covid-vs-normal")
    result = audit.audit_dataset(frame, n_bootstrap=NB)
    assert result["auroc"]["value"] <= 0.6
    assert not result["flagged"]
    assert "ok: AUROC not above 0.60" in audit.audit_report(result)


def test_audit_groups_patients_in_folds(tmp_path, monkeypatch):
    # Every fold's test patients must be absent from its training rows.
    from sklearn import model_selection

    root = write_dataset(tmp_path / "d", covid_format="png", other_format="jpg")
    frame = load_dataset(root, task="covid-vs-normal")
    seen = []
    real = model_selection.StratifiedGroupKFold.split

    def spy(self, X, y=None, groups=None):
        for train, test in real(self, X, y, groups):
            seen.append(set(np.asarray(groups)[train]) & set(np.asarray(groups)[test]))
            yield train, test

    monkeypatch.setattr(model_selection.StratifiedGroupKFold, "split", spy)
    audit.audit_dataset(frame, n_bootstrap=0)
    assert len(seen) == 5 and all(not overlap for overlap in seen)


def test_audit_three_classes(collection):
    with pytest.warns(UserWarning, match="skipped"):
        frame = load_dataset(collection, task="three-class")
    result = audit.audit_dataset(frame, n_bootstrap=50)
    assert result["classes"] == ["normal", "covid", "other"]
    assert "macro" in audit.audit_report(result)


def test_audit_errors(tmp_path):
    root = write_dataset(tmp_path / "d", covid_format="png", other_format="jpg", patients=4)
    frame = load_dataset(root, task="covid-vs-normal")
    with pytest.raises(ValueError, match=r"Expected one of \['gradient-boosting', 'logistic-regression'\]\. Received: model='svm'"):
        audit.audit_dataset(frame, model="svm")
    with pytest.raises(ValueError, match=r"at least 2 patients in every class.*Received: patients_per_class="):
        audit.audit_dataset(frame[frame["patient"] != "1"])
    with pytest.raises(ValueError, match=r"Received: missing=\['path'\]"):
        audit.audit_dataset(frame.drop(columns="path"))


def test_cli_audit(tmp_path, capsys):
    from covidxr.cli import main

    root = write_dataset(tmp_path / "leaky", covid_format="png", other_format="jpg")
    assert main(["audit", "--data-dir", str(root), "--task", "covid-vs-normal", "--n-bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out and "WARNING" in out


@pytest.mark.realdata
def test_audit_real_snapshot_smoke(real_data):
    with pytest.warns(UserWarning):
        frame = load_dataset(real_data, task="covid-vs-rest")
    result = audit.audit_dataset(frame, n_bootstrap=50)
    assert 0.5 <= result["auroc"]["value"] <= 1.0
    assert result["n_images"] > 400
