"""Execute every notebook top to bottom on the synthetic dataset (papermill), and check that
the stored notebooks carry no outputs and have a tagged ``parameters`` cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def params_for(name, *, collection, tmp_path):
    """Small, fast settings for each notebook (the notebooks' own defaults are for real use)."""
    common = {"data_dir": str(collection)}
    table = {
        "01_eda.ipynb": {"out_dir": str(tmp_path / "figures")},
        "02_preprocessing.ipynb": {"image_size": 64, "cache_dir": str(tmp_path / "cache")},
        "03_train.ipynb": {"runs_dir": str(tmp_path / "runs"), "image_size": 32, "weights": "none", "epochs": 1,
                           "fine_tune_epochs": 1, "batch_size": 8, "backbone": "vgg16", "val_size": 0.3,
                           "cache_dir": str(tmp_path / "cache"), "run_grid": True, "grid_backbones": "vgg16",
                           "grid_strategies": "none", "grid_folds": 2, "grid_out": str(tmp_path / "grid"),
                           "grid_n_bootstrap": 10},
        # run_dirs=[]: the notebook then shows the audit only; its run-folder cells are covered in
        # tests/test_evaluate.py and tests/test_gradcam_examples.py.
        "04_evaluation.ipynb": {"run_dirs": [], "n_bootstrap": 20},
    }
    return {**common, **table.get(name, {})}


def test_notebooks_exist():
    names = [p.name for p in ALL]
    assert "01_eda.ipynb" in names


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    assert nb["cells"][0]["cell_type"] == "markdown", "first cell must say what the notebook does"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs", []) == [], f"stored with outputs: {cell['source'][:60]}"
            assert cell.get("execution_count") is None


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_notebook_runs(path, collection, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("COVIDXR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / path.name
    papermill.execute_notebook(
        str(path), str(out), parameters=params_for(path.name, collection=collection, tmp_path=tmp_path),
        cwd=str(tmp_path), kernel_name="python3", progress_bar=False,
    )
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if path.name == "01_eda.ipynb":
        assert (tmp_path / "figures" / "sample_grid.png").is_file()
