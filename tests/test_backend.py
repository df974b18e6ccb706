"""The test run uses the Keras backend it was asked for, and covidxr imports on JAX without
TensorFlow (CI runs the suite on TensorFlow and the ``jax``-marked subset on JAX)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest
from conftest import backend_mismatch


@pytest.mark.jax
def test_backend_mismatch_is_detected(monkeypatch):
    assert backend_mismatch() is None  # the session fixture has checked this run already
    other = "numpy" if keras.backend.backend() != "numpy" else "jax"
    monkeypatch.setenv("KERAS_BACKEND", other)
    message = backend_mismatch()
    assert message is not None
    assert f"keras.backend.backend()={keras.backend.backend()!r}, KERAS_BACKEND={other!r}" in message


NO_TF_SCRIPT = textwrap.dedent("""
    import importlib, pkgutil, sys
    import covidxr
    names = ["cli", "train", "evaluate", "gradcam", "predict", "grid"]
    names += sorted(m.name for m in pkgutil.iter_modules(covidxr.__path__) if m.name not in names)
    for name in names:
        importlib.import_module("covidxr." + name)
        if "tensorflow" in sys.modules:
            print(f"TENSORFLOW imported by covidxr.{name}")
            break
    import keras
    print("BACKEND", keras.backend.backend(), "MODULES", len(names))
""")


@pytest.mark.jax
def test_covidxr_imports_without_tensorflow_on_jax():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TENSORFLOW" not in result.stdout, result.stdout
    assert "BACKEND jax MODULES" in result.stdout, result.stdout
    assert int(result.stdout.split("MODULES")[-1]) >= 14, result.stdout


def test_ci_runs_the_readme_test_command_with_its_jax_part():
    """CI (.ci/run) runs exactly the README's test line, and that line also runs the JAX subset."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = readme.split("**Run the tests**", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert block.count("\n") == 0, "the README's test command should be one line"
    assert block in (root / ".ci" / "run").read_text().splitlines()
    assert "KERAS_BACKEND=jax" in block and "-m jax" in block
