"""Data warnings, summarised: every warning about the data read (rows skipped, labels normalised,
copies merged or left out, files that cannot be read) is a :class:`DataWarning` that carries a
count and a short phrase besides its full text; a loader wrapped in :func:`summarise` (the
readers' :func:`~covidxr.data.load_dataset`, :func:`covidxr.images.load_grouped`) turns the data
warnings of its call into **one** warning ``data: 11 metadata rows name a missing image (skipped);
4 metadata rows repeat an image (first row kept)``, so that a command or a notebook cell shows one
line, however many readers it goes through. Must not print or read data: it only gathers warnings.

Nothing is lost: each warning's full text is in the frame's ``attrs["data_warnings"]``, in the
summary's ``details``, and on the ``covidxr.data`` logger (level INFO: silent unless a handler
asks for it, as ``covidxr --debug`` does; ``covidxr train`` writes them to the run's
``train.log``). Warnings of other kinds (a damaged hash index, say) pass through unchanged.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import warnings

__all__ = ["DataWarning", "logger", "summarise", "summary_text"]

#: Where each data warning is logged in full (INFO) when a loader summarises it.
logger = logging.getLogger("covidxr.data")

#: The registry of the warnings :func:`summarise` passes on: with the default action, each text
#: from one place is shown once, as Python shows a warning once per place.
_REGISTRY: dict = {}

#: True while a summarising loader runs (in this thread or task): a loader it calls leaves its
#: warnings to it.
_NESTED = contextvars.ContextVar("covidxr_data_summarising", default=False)


class DataWarning(UserWarning):
    """A warning about the data read.

    Args:
        message: The full text (what, how many, the first few names, what to do).
        count: How many rows, images or patients it is about (None: not counted).
        what: The short phrase that follows the count in the summary, e.g.
            ``"metadata rows name a missing image (skipped)"`` (default: the message).
        parts: The ``(count, what, message)`` triples of a summary (instead of the three above).
    """

    def __init__(self, message, *, count=None, what=None, parts=None):
        super().__init__(message)
        text = " ".join(str(message).split())
        self.parts = [tuple(p) for p in parts] if parts is not None else [
            (None if count is None else int(count), what or text, text)]

    @property
    def details(self) -> list[str]:
        """The full text of each warning summarised (one, for a warning not summarised)."""
        return [message for _, _, message in self.parts]


def summary_text(parts) -> str:
    """``"data: 11 metadata rows name a missing image (skipped); 2 label spellings normalised"``:
    the counts of the ``(count, what, message)`` triples summed per phrase, in first-seen order."""
    totals: dict = {}
    for count, what, _ in parts:
        if count is None:
            totals.setdefault(what, None)
        else:
            totals[what] = (totals.get(what) or 0) + count
    return "data: " + "; ".join(what if n is None else f"{n} {what}" for what, n in totals.items())


def _pass_on(caught) -> list:
    """Re-warn the warnings of ``caught`` that are not data warnings; return the parts of those
    that are (each message once, so a file read twice is not counted twice)."""
    parts: dict = {}
    for w in caught:
        if isinstance(w.message, DataWarning):
            for part in w.message.parts:
                parts.setdefault(part[2], part)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, registry=_REGISTRY)
    return list(parts.values())


def summarise(fn):
    """Wrap a loader so that the data warnings (:class:`DataWarning`) of one call come out as one (see the
    module docstring); a data frame it returns gets their full texts in ``attrs["data_warnings"]``
    (an empty list when there were none)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _NESTED.get():   # inside another summarising loader: that one summarises
            return fn(*args, **kwargs)
        out, caught, token = None, [], _NESTED.set(True)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = fn(*args, **kwargs)
        finally:  # a loader that fails still says what it found wrong before
            _NESTED.reset(token)
            parts = _pass_on(caught)
            if hasattr(out, "attrs"):
                out.attrs["data_warnings"] = [message for _, _, message in parts]
            for _, _, message in parts:
                logger.info("%s", message)
            if parts:
                warnings.warn_explicit(DataWarning(summary_text(parts), parts=parts), DataWarning, __file__, 0,
                                       registry=_REGISTRY)
        return out

    return wrapper
