"""Execute every notebook top to bottom on the synthetic dataset (papermill), and check that
the stored notebooks carry no outputs, have a tagged ``parameters`` cell, and that the training
notebook's parameters name every ``TrainConfig`` option."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

from covidxr.config import TrainConfig

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def params_for(name, *, collection, tmp_path, run_dirs=()):
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
        # a real tiny run folder (the tiny_run fixture): every run-folder cell runs, Grad-CAM included
        "04_evaluation.ipynb": {"run_dirs": [str(r) for r in run_dirs], "n_bootstrap": 20, "gradcam_examples": 1},
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


#: What must never reach a notebook's output: TensorFlow's start-up lines (absl, oneDNN, CUDA) and
#: warnings' source lines (``file.py:123: UserWarning:``).
NOISE = re.compile(r"^[IWEF]\d{4} |oneDNN|cuda drivers|cuInit|absl::|cpu_feature_guard|\.py:\d+: \w*Warning"
                   r"|^WARNING:tensorflow", re.M)


def _outputs_text(executed) -> str:
    """Every stream, error and text/plain output of an executed notebook, as one text."""
    parts = []
    for cell in executed["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("text") or (output.get("data") or {}).get("text/plain") or ""
            parts.append("".join(text) if isinstance(text, list) else text)
            parts += output.get("traceback", [])
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_notebook_runs(path, collection, tmp_path, monkeypatch, request):
    """Each notebook runs headless from notebooks/ (as ``papermill --cwd notebooks`` and Jupyter do):
    no start-up lines, each warning once without its source line, nothing written into notebooks/."""
    papermill = pytest.importorskip("papermill")
    run_dirs = [request.getfixturevalue("tiny_run")] if path.name == "04_evaluation.ipynb" else []
    monkeypatch.setenv("COVIDXR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # the notebook must quiet TensorFlow itself
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    out = tmp_path / path.name
    papermill.execute_notebook(
        str(path), str(out), parameters=params_for(path.name, collection=collection, tmp_path=tmp_path, run_dirs=run_dirs),
        cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
    )
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before, "the notebook wrote into notebooks/"
    text = _outputs_text(executed)
    assert not NOISE.search(text), NOISE.search(text).group(0)
    warned = [line for line in text.splitlines() if line.startswith("warning: ")]
    assert len(warned) == len(set(warned)), warned
    if path.name == "03_train.ipynb":  # one line per epoch and run (the run, then the grid's), no Keras bar
        runs = text.count("new run folder")
        assert runs == 3 and text.count("phase 1 epoch 1 (1 overall)") == runs, text[-3000:]
        assert "━" not in text and "step - " not in text, text[-3000:]
    if path.name == "01_eda.ipynb":
        assert (tmp_path / "figures" / "sample_grid.png").is_file()
    if path.name == "04_evaluation.ipynb":  # the run-folder cells ran: the run's table and Grad-CAM examples
        text = json.dumps(executed["cells"])
        assert Path(run_dirs[0]).name in text and "image/png" in text


def _cells(name):
    return json.loads((NOTEBOOKS / name).read_text())["cells"]


def _assigned_names(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def _config_keywords(source: str) -> set[str] | None:
    """The keywords of the ``dict(...)`` the notebook builds its TrainConfig from (None if absent)."""
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.startswith("%")))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "dict"):
            return {k.arg for k in node.value.keywords}
    return None


def test_train_notebook_names_every_config_field():
    """Every TrainConfig field has a name in 03_train's parameters cell and goes into the config
    through one explicit dictionary (no globals()): adding a field without the cell fails here."""
    cells = _cells("03_train.ipynb")
    params = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    missing = sorted(fields - _assigned_names("".join(params["source"])))
    assert not missing, f"03_train.ipynb's parameters cell lacks TrainConfig fields: {missing}"
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and "TrainConfig(" in "".join(c["source"])]
    assert code, "03_train.ipynb builds no TrainConfig"
    assert "globals()" not in code[0]
    keywords = _config_keywords(code[0])
    assert keywords is not None, "the TrainConfig must be built from an explicit dict(...) of the parameters"
    assert sorted(fields - keywords) == [], f"the config dictionary lacks fields: {sorted(fields - keywords)}"
    assert sorted(keywords - fields) == [], f"the config dictionary names unknown fields: {sorted(keywords - fields)}"


@pytest.mark.slow
def test_impossible_backbone_and_weights_are_one_line(collection, tmp_path, monkeypatch):
    """Notebook 03 with weights the backbone cannot take stops in one line that names the fix."""
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("COVIDXR_CACHE_DIR", str(tmp_path / "cache"))
    parameters = {**params_for("03_train.ipynb", collection=collection, tmp_path=tmp_path),
                  "backbone": "resnet50", "weights": "hed"}
    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):  # the cell fails, so papermill stops there
        papermill.execute_notebook(str(NOTEBOOKS / "03_train.ipynb"), str(out), parameters=parameters,
                                   cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)
    executed = json.loads(out.read_text())
    failed = next(c for c in executed["cells"] if any(o.get("output_type") == "error" or o.get("name") == "stderr"
                                                       and "error: " in "".join(o.get("text", ""))
                                                       for o in c.get("outputs", [])))
    text = "".join("".join(o.get("text", "")) for o in failed["outputs"] if o.get("name") == "stderr")
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "use backbone 'vgg16' with weights 'hed'" in lines[0], text
    assert "Traceback" not in _outputs_text(executed)
