"""Notebooks as quiet as the command line: :func:`setup_notebook`, the first call of every notebook.
Must not hold pipeline logic: it sets up the notebook's output and working folder, as
:func:`covidxr.cli.main` does for a command (and reuses :mod:`covidxr.cli.quiet` and the command
line's one-line errors).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from . import ANTICIPATED, describe_error
from .quiet import install, show_warning

__all__ = ["notebook_warning", "repository_root", "setup_notebook"]

_SHOWN: set = set()


def notebook_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for a notebook: each warning's text once per kernel, as one line
    ``warning: ...`` (no source line); a repeated data warning (every cell that reads the data
    raises it again) is not shown again."""
    text = " ".join(str(message).split())
    if text in _SHOWN:
        return
    _SHOWN.add(text)
    show_warning(message, category, filename, lineno, file=file, line=line)


def _ipython():
    """The running IPython shell, or None (plain Python)."""
    module = sys.modules.get("IPython")
    return module.get_ipython() if module is not None and hasattr(module, "get_ipython") else None


def repository_root(folder=None):
    """The covidxr checkout ``folder`` (default: the working folder) is the ``notebooks/`` folder
    of, or None: the parent of a folder named ``notebooks`` that holds ``src/covidxr`` and
    ``pyproject.toml``."""
    here = Path.cwd() if folder is None else Path(folder)
    parent = here.resolve().parent
    if here.resolve().name == "notebooks" and (parent / "pyproject.toml").is_file() and (parent / "src" / "covidxr").is_dir():
        return parent
    return None


def _one_line_error(shell, etype, value, tb, tb_offset=None):
    """IPython's handler of an anticipated failure: ``error: ...`` on one line, as the command line
    says it (the cell still fails, so papermill stops there)."""
    line = f"error: {describe_error(value)}"
    print(line, file=sys.stderr)
    return [line]


def setup_notebook(*, chdir: bool = True, debug: bool = False):
    """Make a notebook as quiet as the command line and give it the command line's folders.

    TensorFlow's start-up lines are filtered as for the command line (:func:`install`; call this
    before anything imports TensorFlow: first in the notebook); each warning is shown once, as one
    line (:func:`notebook_warning`; deprecation notices for the libraries' developers are left
    out); Keras' own progress bars are left to covidxr's line per epoch. Run from a checkout's
    ``notebooks/`` folder (as Jupyter and ``papermill --cwd notebooks`` do), the working folder
    becomes the repository root, so the defaults ``data/raw``, ``data/interim`` and ``runs`` are
    the repository's own, as for the command line, and nothing is written into ``notebooks/``.

    An anticipated failure (a bad option such as a backbone the weights do not fit, a missing
    file) is one line ``error: ...`` that says what to change, as on the command line.

    Args:
        chdir: Change to the repository root when run from its ``notebooks/`` folder.
        debug: Show the full traceback of anticipated failures too.

    Returns:
        The working folder now (a ``pathlib.Path``).
    """
    install()
    tf_logger = logging.getLogger("tensorflow")  # e.g. "5 out of the last 15 calls ... retracing"
    if not any(getattr(f, "covidxr", False) for f in tf_logger.filters):  # a filter: TensorFlow resets the level
        errors_only = logging.Filter()
        errors_only.filter = lambda record: record.levelno >= logging.ERROR
        errors_only.covidxr = True
        tf_logger.addFilter(errors_only)
    warnings.showwarning = notebook_warning
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    warnings.filterwarnings("always", category=UserWarning)  # repeats are dropped by their text, not location
    shell = _ipython()
    if shell is not None and not debug:
        shell.set_custom_exc(ANTICIPATED, _one_line_error)
    root = repository_root() if chdir else None
    if root is not None:
        os.chdir(root)
    return Path.cwd()
