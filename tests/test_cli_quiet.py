"""Tests for a quiet command line: no TensorFlow/absl/oneDNN/CUDA start-up lines on real commands
(run as subprocesses with ``TF_CPP_MIN_LOG_LEVEL`` unset), warnings as one ``warning: ...`` line,
and the filter of the lines printed while TensorFlow loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings


from covidxr.cli import quiet

NOISE = re.compile(r"oneDNN|absl|cuda|tensorflow/core|cudart|TF-TRT|I0000|W0000|E0000", re.IGNORECASE)


def _covidxr(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in quiet.QUIET_ENVIRONMENT}  # as a user's shell
    result = subprocess.run([sys.executable, "-m", "covidxr.cli", *map(str, args)], capture_output=True, text=True,
                            env=env, cwd=cwd, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_real_commands_print_no_start_up_lines(collection, tmp_path):
    """``train`` one epoch at 32 px, ``evaluate --data-dir``, ``predict``: no library start-up line."""
    runs = tmp_path / "runs"
    outputs = {"train": _covidxr("train", "--data-dir", collection, "--backbone", "vgg16", "--weights", "none",
                                 "--image-size", 32, "--batch-size", 8, "--epochs", 1, "--fine-tune-epochs", 0,
                                 "--runs-dir", runs, "--cache-dir", tmp_path / "cache", cwd=tmp_path)}
    (run,) = runs.iterdir()
    outputs["evaluate"] = _covidxr("evaluate", "--run", run, "--data-dir", collection, "--n-bootstrap", 10,
                                   "--no-figures", "--allow-overlap", cwd=tmp_path)
    outputs["predict"] = _covidxr("predict", collection / "images" / "p000_0.jpg", "--run", run, cwd=tmp_path)
    noisy = {name: [line for line in text.splitlines() if NOISE.search(line)] for name, text in outputs.items()}
    assert noisy == {"train": [], "evaluate": [], "predict": []}
    assert "phase 1 epoch 1 (1 overall)" in outputs["train"]
    assert "\x1b[" not in outputs["train"] and "\b" not in outputs["train"]  # redirected: no progress bars
    warned = [line for line in outputs["train"].splitlines() if "metadata rows" in line]
    assert warned == ["warning: data: 1 metadata rows name a missing image (skipped)"]  # one line, no source line
    assert f"DEBUG data warning: 1 of 73 metadata rows name an image that is not in {collection}; skipped.\n" \
        in (run / "train.log").read_text()   # the warning in full: in the run's log
    assert not [line for line in outputs["train"].splitlines() if re.match(r"\s+\S.*\(.*\)$|.*\.py:\d+: ", line)]


ABSL = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796130308.184745   24945 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796130308.265455   24945 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.
E0000 00:00:1796130316.085978   24945 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)
F0000 00:00:1796130316.085978   24945 main.cc:1] fatal
a line of our own
"""


def test_filter_log_keeps_what_the_log_level_asks_for():
    assert quiet.filter_log(ABSL, min_level=3) == "F0000 00:00:1796130316.085978   24945 main.cc:1] fatal\n" \
                                                  "a line of our own\n"
    kept = quiet.filter_log(ABSL, min_level=2)
    assert "cuInit" in kept and "oneDNN" not in kept and "To enable" not in kept and "absl::" not in kept
    assert quiet.filter_log(ABSL, min_level=0) == ABSL  # TF_CPP_MIN_LOG_LEVEL=0: the user asked for all


def test_quiet_environment_respects_the_users_values():
    environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    added = quiet.quiet_environment(environ)
    assert environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and "TF_CPP_MIN_LOG_LEVEL" not in added
    assert environ["GRPC_VERBOSITY"] == "ERROR"


def test_import_filter_with_a_users_log_level(tmp_path):
    """The first ``import tensorflow`` goes through the filter; with TF_CPP_MIN_LOG_LEVEL=0 its
    lines are shown, and Python's own stderr output during the import is kept."""
    (tmp_path / "tensorflow.py").write_text(
        "import os, sys\n"
        "os.write(2, b'I0000 00:00:1.1   1 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "print('python says hi', file=sys.stderr)\n")
    code = ("from covidxr.cli import quiet; quiet.install(); import tensorflow, sys; "
            "print('finder left', any(type(f).__name__ == '_QuietFinder' for f in sys.meta_path))")
    for level, shown in (("3", False), ("0", True)):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": level,
               "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert ("oneDNN" in out.stderr) is shown
        assert "python says hi" in out.stderr and out.stdout.strip() == "finder left False"


def test_warnings_are_one_line(capsys):
    with quiet.quiet_warnings():
        warnings.warn("two\n   lines", UserWarning, stacklevel=1)
        warnings.warn("gone", DeprecationWarning, stacklevel=1)
        warnings.warn("shown", RuntimeWarning, stacklevel=1)
    assert capsys.readouterr().err == "warning: two lines\nwarning: RuntimeWarning: shown\n"
    with quiet.quiet_warnings(debug=True):
        warnings.warn("now shown", DeprecationWarning, stacklevel=1)
    assert capsys.readouterr().err == "warning: DeprecationWarning: now shown\n"
