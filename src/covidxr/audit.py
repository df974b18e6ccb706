"""Shortcut audit: can the label be guessed from properties of the image *files* alone?
Must not decode pixels or write files: it reads file headers and returns the audit's figures.

Public chest X-ray collections often gather each class from a different source: COVID-19
images from papers and websites, normal ones from an older archive. The file format, colour
mode, size and bit depth then differ between classes, and a network can learn the source
instead of the disease. This module trains a trivial classifier (scikit-learn) on those file
properties only -- no pixel is decoded -- with patient-grouped cross-validation (by split group:
patients that share an image stay in one fold), and reports its out-of-fold AUROC with a
group-bootstrap confidence interval. An AUROC well above 0.5
(default warning level: 0.6) means the label can be guessed from where the file came from,
and that a model's good score may be a shortcut.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .data import get_task
from .data.groups import group_column
from .evaluation import bootstrap as B
from .evaluation.metrics import prob_columns

__all__ = ["AUDIT_FEATURES", "AUDIT_MODELS", "audit_dataset", "audit_report", "file_properties"]

#: File properties the audit uses (none needs the pixels).
AUDIT_FEATURES = ("format", "mode", "width", "height", "bit_depth")
#: Classifiers the audit can use.
AUDIT_MODELS = ("gradient-boosting", "logistic-regression")

# Bits per pixel of Pillow modes whose bands are not 8 bits each.
_MODE_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "LA": 16,
              "La": 16, "PA": 16}


def _pil_properties(path) -> dict:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only; pixels stay on disk
        mode = im.mode
        bits = _MODE_BITS.get(mode, 8 * len(im.getbands()))
        return {"format": str(im.format or Path(path).suffix.lstrip(".").upper()), "mode": mode,
                "width": int(im.width), "height": int(im.height), "bit_depth": int(bits)}


def _dicom_properties(path) -> dict:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {"format": "DICOM", "mode": str(getattr(ds, "PhotometricInterpretation", "unknown")),
            "width": int(ds.Columns), "height": int(ds.Rows),
            "bit_depth": int(getattr(ds, "BitsStored", 0)) * int(getattr(ds, "SamplesPerPixel", 1))}


def file_properties(paths) -> pd.DataFrame:
    """Format, colour mode, width, height and bit depth of image files, from their headers.

    Args:
        paths: Image file paths, length n (PNG, JPEG, ... through Pillow; DICOM through
            pydicom).

    Returns:
        A frame of shape (n, 6): ``format``, ``mode`` (strings; ``"unreadable"`` when the
        header cannot be read), ``width``, ``height``, ``bit_depth`` (floats; NaN when
        unreadable) and ``readable`` (bool).
    """
    rows = []
    for path in paths:
        try:
            if str(path).lower().endswith((".dcm", ".dicom")):
                props = _dicom_properties(path)
            else:
                props = _pil_properties(path)
            props["readable"] = True
        except Exception:  # noqa: BLE001 - any unreadable header is recorded, not fatal
            props = {"format": "unreadable", "mode": "unreadable", "width": np.nan, "height": np.nan,
                     "bit_depth": np.nan, "readable": False}
        rows.append(props)
    out = pd.DataFrame(rows, columns=[*AUDIT_FEATURES, "readable"])
    for col in ("width", "height", "bit_depth"):
        out[col] = out[col].astype(float)
    return out


def _pipeline(model, seed):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    numeric = ["width", "height", "bit_depth"]
    if model == "gradient-boosting":
        num = SimpleImputer(strategy="median", keep_empty_features=True)
        clf = GradientBoostingClassifier(n_estimators=100, max_depth=2, learning_rate=0.1, random_state=seed)
    else:
        num = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                            FunctionTransformer(np.log1p), StandardScaler())
        clf = LogisticRegression(max_iter=2000, C=1.0)
    features = ColumnTransformer([
        ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["format", "mode"]),
        ("numeric", num, numeric),
    ])
    return Pipeline([("features", features), ("classifier", clf)])


def _audited_rows(frame: pd.DataFrame, *, classes, model, n_splits):
    """Check the audit's options; return the rows of ``classes``, the classes and the patients per class."""
    if model not in AUDIT_MODELS:
        raise ValueError(f"Unknown audit model. Expected one of {list(AUDIT_MODELS)}. Received: model={model!r}")
    missing = [c for c in ("path", "patient", "label") if c not in frame.columns]
    if missing:
        raise ValueError(f"Expected a dataset frame with path, patient and label columns. Received: missing={missing}")
    if classes is None:
        task = frame.attrs.get("task")
        classes = list(get_task(task).classes) if task else sorted(frame["label"].astype(str).unique())
    classes = [str(c) for c in classes]
    frame = frame[frame["label"].astype(str).isin(classes)].reset_index(drop=True)
    per_class = frame.groupby("label")[group_column(frame)].nunique().reindex(classes, fill_value=0)
    if per_class.min() < 2:
        raise ValueError(
            "Expected at least 2 patients in every class for a patient-grouped cross-validation "
            "(patients sharing an image count once). "
            f"Received: patients_per_class={per_class.to_dict()}"
        )
    if int(n_splits) < 2:
        raise ValueError(f"Expected n_splits >= 2. Received: n_splits={n_splits!r}")
    return frame, classes, per_class


def audit_dataset(frame: pd.DataFrame, *, classes=None, model="gradient-boosting", n_splits=5, n_bootstrap=1000,
                  seed=0, level=0.95, warn_above=0.6) -> dict:
    """Cross-validated AUROC of a classifier that sees only file properties.

    Args:
        frame: A dataset frame (``path``, ``patient``, ``label``; e.g. from
            :func:`covidxr.data.load_dataset`), shape (n, ...).
        classes: Class names in order (default: the frame's task classes, else sorted labels).
        model: One of :data:`AUDIT_MODELS`: gradient boosting (default; finds size
            thresholds) or logistic regression, on one-hot format and mode plus numeric
            width, height and bit depth.
        n_splits: Folds of the patient-grouped, stratified cross-validation
            (``StratifiedGroupKFold``; lowered to the patients of the smallest class).
        n_bootstrap: Resamples of the patient bootstrap of the AUROC.
        seed: Seed of the folds, the model and the bootstrap.
        level: Interval coverage.
        warn_above: The AUROC above which the result is flagged.

    Returns:
        A dict: ``auroc`` ({value, ci_low, ci_high, n_used}; macro one-vs-rest for three
        classes), ``flagged`` (bool), ``warn_above``, ``model``, ``n_splits``, ``classes``,
        ``n_images``, ``n_patients``, ``class_counts``, ``unreadable`` (count),
        ``crosstabs`` ({"format": DataFrame, "mode": DataFrame} of counts per class),
        ``sizes`` (DataFrame: median width/height/bit depth per class), ``properties``
        (the per-image feature frame with ``label``, ``patient`` and out-of-fold ``prob_*``).

    Raises:
        ValueError: Unknown model, missing columns, or fewer than 2 patients in a class.
    """
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    frame, classes, per_class = _audited_rows(frame, classes=classes, model=model, n_splits=n_splits)
    props = file_properties(frame["path"])
    y = frame["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=int)
    groups = frame[group_column(frame)].astype(str).to_numpy()  # merged patients stay in one fold
    splits = int(min(int(n_splits), per_class.min()))
    cv = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probs = cross_val_predict(_pipeline(model, seed), props[list(AUDIT_FEATURES)], y, groups=groups, cv=cv,
                                  method="predict_proba")
    boot = B.bootstrap_metrics(y, probs, groups, classes=classes, threshold=None if len(classes) > 2 else 0.5,
                               n_bootstrap=n_bootstrap, seed=seed, level=level)
    auroc = boot["metrics"]["roc_auc" if len(classes) == 2 else "roc_auc[macro]"]
    labelled = props.assign(label=frame["label"].astype(str).to_numpy(),
                            patient=frame["patient"].astype(str).to_numpy(),
                            group=groups,
                            image=frame["image"].to_numpy() if "image" in frame.columns else frame["path"].to_numpy())
    for i, column in enumerate(prob_columns(classes)):
        labelled[column] = probs[:, i]
    crosstabs = {f: pd.crosstab(labelled[f], labelled["label"]).reindex(columns=classes, fill_value=0)
                 for f in ("format", "mode")}
    sizes = labelled.groupby("label")[["width", "height", "bit_depth"]].median().reindex(classes)
    return {
        "auroc": auroc,
        "flagged": bool(auroc["value"] > float(warn_above)),
        "warn_above": float(warn_above),
        "model": model,
        "n_splits": splits,
        "n_bootstrap": int(n_bootstrap),
        "level": float(level),
        "seed": int(seed),
        "classes": classes,
        "task": frame.attrs.get("task"),
        "n_images": int(len(frame)),
        "n_patients": int(frame["patient"].nunique()),
        "n_groups": int(len(np.unique(groups))),
        "class_counts": {c: {"images": int((labelled["label"] == c).sum()),
                             "patients": int(labelled.loc[labelled["label"] == c, "patient"].nunique()),
                             "groups": int(per_class[c])} for c in classes},
        "unreadable": int((~props["readable"]).sum()),
        "crosstabs": crosstabs,
        "sizes": sizes,
        "properties": labelled,
    }


def audit_report(result: dict, *, data=None) -> str:
    """The text ``covidxr audit`` prints."""
    a = result["auroc"]
    counts = ", ".join(f"{c} {n['images']} images / {n['patients']} patients"
                       for c, n in result["class_counts"].items())
    ci = (f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}]" if not np.isnan(a["ci_low"]) else "[n/a]")
    lines = [
        "Shortcut audit: can properties of the image files alone (format, colour mode, width, "
        "height, bit depth; no pixels) predict the label?",
        f"data: {data or '?'} (task {result.get('task')}; {counts})",
        f"model: {result['model']}, {result['n_splits']}-fold patient-grouped cross-validation "
        "(StratifiedGroupKFold)" + (f"; {result['unreadable']} unreadable headers" if result["unreadable"] else ""),
        f"AUROC {'(macro, one-vs-rest) ' if len(result['classes']) > 2 else ''}{a['value']:.3f} "
        f"{int(result['level'] * 100)}% CI {ci} (group bootstrap stratified by class, {a['n_used']} resamples)",
    ]
    if result["flagged"]:
        lines.append(
            f"WARNING: AUROC above {result['warn_above']:.2f}: the label can be guessed from the file's "
            "source (format, mode, size), without looking at the lungs. A model's score on this data may "
            "be a shortcut; check Grad-CAM maps and validate on data from other sources."
        )
    else:
        lines.append(f"ok: AUROC not above {result['warn_above']:.2f}; file properties alone do not give the label "
                     "away (this does not rule out other shortcuts, such as text markers or borders).")
    lines += ["", "images per format and class:", result["crosstabs"]["format"].to_string(),
              "", "images per colour mode and class:", result["crosstabs"]["mode"].to_string(),
              "", "median size and bit depth per class:", result["sizes"].round(1).to_string()]
    return "\n".join(lines)
