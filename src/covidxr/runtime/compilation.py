"""The compilation cache: :func:`enable_compilation_cache` turns on JAX's persistent
compilation cache, so folds and strategies with the same architecture and shapes are not
compiled again in a new process. Must not change what is computed, only when it is compiled."""

from __future__ import annotations

import os
from pathlib import Path

import keras

__all__ = [
    "enable_compilation_cache",
]


def _default_cache_dir() -> Path:
    if os.environ.get("COVIDXR_JAX_CACHE_DIR"):
        return Path(os.environ["COVIDXR_JAX_CACHE_DIR"])
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "covidxr" / "jax-compilation-cache"


def enable_compilation_cache(path=None) -> bool:
    """Turn on JAX's persistent compilation cache in ``path``.

    Compiled train/predict steps are written there and reused by any later process (a new
    fold, another strategy, a resumed run) that compiles the same computation: same
    architecture, input shapes, dtypes, devices and JAX version. The thresholds are lowered
    (``jax_persistent_cache_min_compile_time_secs=0``,
    ``jax_persistent_cache_min_entry_size_bytes=-1``) so that small models are cached too.
    The directory is trusted code: do not share it with users you do not trust.

    Args:
        path: Cache folder (created). Default: ``$COVIDXR_JAX_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/covidxr/jax-compilation-cache`` (``~/.cache/...``).

    Returns:
        True when the JAX cache is on; False (and nothing done) on other backends.
    """
    if keras.backend.backend() != "jax":
        return False
    import jax

    folder = Path(path).expanduser() if path is not None else _default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    folder = str(folder.resolve())
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if previous and previous != folder:
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()  # drop the cache opened on the previous folder
    return True
