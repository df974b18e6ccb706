"""Quiet start-up for the command line: TensorFlow's logging environment, the lines its shared
libraries print while ``import tensorflow`` runs, and warnings as one ``warning: ...`` line.
Must not import TensorFlow, Keras or anything heavy: it is installed before any command runs.

Why the environment alone is not enough (TensorFlow 2.21, measured): its C++ libraries log through
absl, and the lines written while they load (oneDNN, ``cudart_stub.cc ... Could not find cuda
drivers``, ``cpu_feature_guard.cc``, once per library: twice) come before absl is initialised,
so ``TF_CPP_MIN_LOG_LEVEL`` does not reach them ("All log messages before absl::InitializeLog()
is called are written to STDERR"). :func:`install` therefore also wraps the first
``import tensorflow``: file descriptor 2 goes to a temporary file while it runs, and afterwards
the lines captured are replayed on stderr except absl-format lines below the log level in force
(so a real error still shows). Lines logged after the import (``cuInit`` failing on a machine
without a GPU) obey ``TF_CPP_MIN_LOG_LEVEL``, which :func:`quiet_environment` sets.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings

__all__ = ["QUIET_ENVIRONMENT", "filter_log", "install", "quiet_environment", "quiet_warnings", "show_warning"]

#: Set unless the user set them: TensorFlow's C++ log level (3: fatal only; its errors that matter
#: reach Python as exceptions), gRPC's and glog's.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR", "GLOG_minloglevel": "3"}

#: absl's format: severity letter, date (0000 before absl is initialised, and the seconds since 1970
#: in place of the time of day), time, thread, file:line].
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]*\] ")
_ABSL_NOTE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def quiet_environment(environ=None) -> dict:
    """Set :data:`QUIET_ENVIRONMENT` in ``environ`` (default ``os.environ``) where the user has not
    set the variable; return what was set."""
    environ = os.environ if environ is None else environ
    added = {k: v for k, v in QUIET_ENVIRONMENT.items() if k not in environ}
    environ.update(added)
    return added


def _min_level(environ=None) -> int:
    value = (os.environ if environ is None else environ).get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    return int(value) if value in ("0", "1", "2", "3") else 0


def filter_log(text: str, *, min_level: int) -> str:
    """The lines of ``text`` to show: absl-format lines (and the lines that continue them) of a
    severity below ``min_level`` are left out, as is absl's note about logging before its start."""
    kept, keep = [], True
    for line in text.splitlines(keepends=True):
        match = _ABSL_LINE.match(line)
        if match:
            keep = _SEVERITY[match.group(1)] >= min_level
        elif line.startswith(_ABSL_NOTE):
            kept += [line] if min_level == 0 else []
            keep = True  # the note continues nothing
            continue
        if keep:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _filtered_stderr(min_level: int):
    """File descriptor 2 (what C libraries write) into a temporary file while the block runs, then
    the lines :func:`filter_log` keeps written to stderr; ``sys.stderr`` (Python's own output)
    meanwhile writes to the real stderr directly."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded): leave it alone
        yield
        return
    python_stderr, real = sys.stderr, open(saved, "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                                           closefd=False)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        sys.stderr = real
        try:
            yield
        finally:
            sys.stderr = python_stderr
            _restream(real, python_stderr)
            real.close()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            shown = filter_log(tmp.read().decode("utf-8", "replace"), min_level=min_level)
            if shown:
                sys.stderr.write(shown)
                sys.stderr.flush()


def _restream(old, new) -> None:
    """Point the logging handlers made during the import at ``old`` (the temporary stderr, about to
    be closed: TensorFlow's Python logger keeps the ``sys.stderr`` of its import) to ``new``."""
    loggers = [logging.getLogger()] + [v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader's ``exec_module`` inside :func:`_filtered_stderr`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader  # resources and reloads see the real loader
        with _filtered_stderr(_min_level()):
            self._loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` the ordinary way, once, and hands it to :class:`_QuietLoader`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None  # not installed: the import fails as it would without us
        spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Quiet TensorFlow's start-up for this process: :func:`quiet_environment`, and the first
    ``import tensorflow`` (by Keras or anyone) filtered as the module docstring says. Call it
    before anything imports TensorFlow; afterwards (or twice) it only sets the environment."""
    quiet_environment()
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


def show_warning(message, category, filename, lineno, file=None, line=None, *, seen=None) -> None:
    """``warnings.showwarning`` for the command line: one line ``warning: ...`` on stderr, without
    the library's source line (a category other than ``UserWarning``'s family is named). With
    ``seen`` (a set), a line already in it is not printed again: each warning once per command,
    however many runs of a grid read the same data."""
    text = " ".join(str(message).split())
    if not issubclass(category, UserWarning):
        text = f"{category.__name__}: {text}"
    if seen is not None:
        if text in seen:
            return
        seen.add(text)
    stream = sys.stderr if file is None else file
    with contextlib.suppress(OSError, ValueError, AttributeError):
        stream.write(f"warning: {text}\n")


@contextlib.contextmanager
def quiet_warnings(*, debug: bool = False):
    """While the block runs, :func:`show_warning` prints warnings, each text once; without ``debug``, deprecation
    notices meant for the libraries' developers are left out; with it, each data warning a loader
    summarised (one ``warning: data: ...`` line) is also printed in full, as ``data warning: ...``
    (the ``covidxr.data`` logger's INFO records)."""
    data_logger = logging.getLogger("covidxr.data")   # by name: importing covidxr.data would load pandas
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("data warning: %(message)s"))
    level = data_logger.level
    with warnings.catch_warnings():
        warnings.showwarning = functools.partial(show_warning, seen=set())
        if not debug:
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        else:
            data_logger.addHandler(handler)
            data_logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            data_logger.removeHandler(handler)
            data_logger.setLevel(level)

