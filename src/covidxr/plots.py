"""Figures: exploratory data analysis, training curves and evaluation.

Every function draws on a Matplotlib ``Axes`` (or makes a ``Figure``) and returns it, so the
notebooks show them inline and the command line saves them; none of them calls
``plt.show``. ``seaborn`` is used for styling only where installed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

#: Attribution printed under every figure that shows images from the collection.
DATASET_ATTRIBUTION = (
    "Images: COVID-19 Image Data Collection (Cohen et al., arXiv:2006.11988); "
    "each image under its own licence (see metadata.csv)."
)

CATEGORY_COLOURS = {"covid": "#c0392b", "normal": "#2e86c1", "other": "#7d8c8d", "non-covid": "#2e86c1"}


def _axes(ax, figsize=(5, 3.5)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _label_bars(ax, bars):
    for bar in bars:
        height = bar.get_height()
        ax.annotate(f"{int(height)}", (bar.get_x() + bar.get_width() / 2, height),
                    ha="center", va="bottom", fontsize=8)


# --------------------------------------------------------------------------- EDA

def plot_sex_distribution(frame: pd.DataFrame, *, ax=None, by="category"):
    """Images per sex, split by ``by`` (category or label). Blank sex is shown as "unknown"."""
    ax = _axes(ax)
    table = (frame.assign(sex=frame["sex"].fillna("unknown"))
             .groupby(["sex", by]).size().unstack(fill_value=0))
    table.plot.bar(ax=ax, stacked=True, rot=0,
                   color=[CATEGORY_COLOURS.get(c, None) for c in table.columns])
    ax.set(title="Sex", xlabel="", ylabel="images")
    ax.legend(title=by, fontsize=8)
    return ax


def plot_age_by_sex(frame: pd.DataFrame, *, ax=None, bins=range(0, 101, 10)):
    """Histogram of age at imaging, one series per sex (patients with unknown age left out)."""
    ax = _axes(ax)
    known = frame.dropna(subset=["age"])
    for sex, group in known.assign(sex=known["sex"].fillna("unknown")).groupby("sex"):
        ax.hist(group["age"], bins=list(bins), alpha=0.6, label=f"{sex} (n={len(group)})")
    ax.set(title=f"Age by sex ({frame['age'].isna().sum()} images without age)",
           xlabel="age (years)", ylabel="images")
    ax.legend(fontsize=8)
    return ax


def plot_class_counts(counts: pd.DataFrame, *, ax=None):
    """Images per class for each task, with patient counts in the labels.

    Args:
        counts: Output of :func:`covidxr.data.task_counts` (task, class, images, patients).
    """
    ax = _axes(ax, figsize=(7, 3.5))
    x = 0
    ticks, names = [], []
    for task, group in counts.groupby("task", sort=False):
        for _, row in group.iterrows():
            bar = ax.bar(x, row["images"], color=CATEGORY_COLOURS.get(row["class"], "#999999"))
            ax.annotate(f"{row['images']}\n({row['patients']} pat.)", (x, row["images"]),
                        ha="center", va="bottom", fontsize=7)
            ticks.append(x)
            names.append(f"{row['class']}")
            x += 1
            del bar
        ax.annotate(task, (x - len(group) / 2 - 0.5, -0.18), xycoords=("data", "axes fraction"),
                    ha="center", fontsize=8, fontweight="bold")
        x += 0.8
    ax.set_xticks(ticks, names, fontsize=7, rotation=30)
    ax.set(title="Class counts per task (images, patients)", ylabel="images")
    ax.margins(y=0.25)
    return ax


def plot_views_modalities(frame: pd.DataFrame, *, ax=None):
    """Images per view and modality."""
    ax = _axes(ax)
    table = (frame.assign(view=frame["view"].fillna("unknown"), modality=frame["modality"].fillna("unknown"))
             .groupby(["view", "modality"]).size().unstack(fill_value=0))
    table.plot.barh(ax=ax, stacked=True)
    ax.set(title="Views and modalities", xlabel="images", ylabel="")
    return ax


def plot_images_per_patient(frame: pd.DataFrame, *, ax=None):
    """How many images each patient has (the reason splits must be by patient)."""
    ax = _axes(ax)
    per_patient = frame.groupby("patient").size()
    counts = per_patient.value_counts().sort_index()
    bars = ax.bar(counts.index.astype(str), counts.to_numpy(), color="#5d6d7e")
    _label_bars(ax, bars)
    ax.set(title=f"Images per patient ({len(per_patient)} patients, {len(frame)} images)",
           xlabel="images of one patient", ylabel="patients")
    return ax


def plot_sources(frame: pd.DataFrame, *, ax=None, top=12):
    """Images per source (URL host) and category: shows how far source and label coincide."""
    ax = _axes(ax, figsize=(6, 4))
    table = frame.groupby(["source", "category"]).size().unstack(fill_value=0)
    table = table.loc[table.sum(axis=1).sort_values(ascending=False).index[:top]]
    table.plot.barh(ax=ax, stacked=True, color=[CATEGORY_COLOURS.get(c) for c in table.columns])
    ax.invert_yaxis()
    ax.set(title=f"Images per source (top {top})", xlabel="images", ylabel="")
    return ax


def plot_sample_grid(frame: pd.DataFrame, *, samples=4, seed=0, by="category", image_size=160,
                     load=None):
    """A grid of sample images, one row per class, with the attribution underneath.

    Args:
        frame: Rows with ``path`` and the ``by`` column.
        samples: Images per class (columns).
        seed: Which images are drawn.
        image_size: Thumbnail size in pixels.
        load: ``path -> 2-D uint8 array``; default: :func:`covidxr.images.load_image` when
            available, else Pillow's greyscale conversion.

    Returns:
        The Matplotlib figure.
    """
    if load is None:
        load = _default_loader()
    classes = sorted(frame[by].unique())
    fig, axes = plt.subplots(len(classes), samples, figsize=(1.9 * samples, 2.0 * len(classes) + 0.4),
                             squeeze=False, layout="constrained")
    rng = np.random.default_rng(seed)
    for r, cls in enumerate(classes):
        rows = frame[frame[by] == cls]
        picks = rows.iloc[rng.permutation(len(rows))[:samples]]
        for c in range(samples):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(picks):
                row = picks.iloc[c]
                image = load(row["path"])
                from PIL import Image

                thumb = Image.fromarray(image)
                thumb.thumbnail((image_size, image_size))
                ax.imshow(np.asarray(thumb), cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"{str(row.get('finding', ''))[:22]}\n{row.get('view', '')}", fontsize=7)
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(f"{cls} (n={len(rows)})", fontsize=9)
    fig.suptitle("Sample images per class", fontsize=10)
    fig.supxlabel(DATASET_ATTRIBUTION, fontsize=6)
    return fig


def _default_loader():
    try:
        from .images import load_image

        return load_image
    except ImportError:  # pragma: no cover - images module always ships
        from PIL import Image, ImageOps

        return lambda p: np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("L"))


def eda_figure(frame: pd.DataFrame, counts: pd.DataFrame):
    """The EDA overview: sex, age, class counts per task, views, images per patient, sources."""
    fig, axes = plt.subplots(3, 2, figsize=(12, 12), layout="constrained")
    plot_sex_distribution(frame, ax=axes[0, 0])
    plot_age_by_sex(frame, ax=axes[0, 1])
    plot_class_counts(counts, ax=axes[1, 0])
    plot_views_modalities(frame, ax=axes[1, 1])
    plot_images_per_patient(frame, ax=axes[2, 0])
    plot_sources(frame, ax=axes[2, 1])
    return fig


def write_eda_figures(frame: pd.DataFrame, out_dir, *, samples=4, seed=0) -> list[Path]:
    """Write the EDA figures as PNG files into ``out_dir`` (created if needed).

    Returns:
        The paths written: ``eda_overview.png``, one PNG per panel, ``sample_grid.png``.
    """
    from .data import task_counts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = task_counts(frame)
    written = []
    panels = {
        "eda_sex.png": lambda ax: plot_sex_distribution(frame, ax=ax),
        "eda_age_by_sex.png": lambda ax: plot_age_by_sex(frame, ax=ax),
        "eda_class_counts.png": lambda ax: plot_class_counts(counts, ax=ax),
        "eda_views.png": lambda ax: plot_views_modalities(frame, ax=ax),
        "eda_images_per_patient.png": lambda ax: plot_images_per_patient(frame, ax=ax),
        "eda_sources.png": lambda ax: plot_sources(frame, ax=ax),
    }
    fig = eda_figure(frame, counts)
    written.append(_save(fig, out / "eda_overview.png"))
    for name, draw in panels.items():
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
        draw(ax)
        written.append(_save(fig, out / name))
    fig = plot_sample_grid(frame, samples=samples, seed=seed)
    written.append(_save(fig, out / "sample_grid.png"))
    return written


def _save(fig, path: Path, *, dpi=110) -> Path:
    """Save a figure atomically (temporary name, then rename) and close it."""
    from .atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


save_figure = _save


# --------------------------------------------------------------------------- training curves

def plot_training_curves(history, ax=None):
    """Loss and AUC per epoch, training vs validation, both phases, phase boundary marked.

    Args:
        history: ``history.csv`` of a run (path or DataFrame) with columns ``epoch``,
            ``phase`` and ``loss``/``val_loss``/``auc``/``val_auc`` (missing ones are skipped).
        ax: Two Matplotlib axes (loss, AUC); None makes a new figure.

    Returns:
        The two axes (numpy array of shape (2,)).
    """
    if not isinstance(history, pd.DataFrame):
        history = pd.read_csv(history)
    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    axes = np.asarray(ax).ravel()
    if axes.size != 2:
        raise ValueError(f"Expected two axes (loss, AUC). Received: ax with {axes.size} axes")
    epoch = history["epoch"] if "epoch" in history else pd.Series(np.arange(1, len(history) + 1))
    for a, metric, title in ((axes[0], "loss", "Loss"), (axes[1], "auc", "ROC AUC")):
        for column, style, label in ((metric, "-o", "train"), (f"val_{metric}", "--s", "validation")):
            if column in history:
                a.plot(epoch, history[column], style, markersize=3, label=label)
        if "phase" in history:
            phases = history["phase"].to_numpy()
            for i in np.flatnonzero(phases[1:] != phases[:-1]):
                boundary = (epoch.iloc[i] + epoch.iloc[i + 1]) / 2
                a.axvline(boundary, color="grey", linestyle=":", linewidth=1)
                a.annotate("fine-tuning", (boundary, 1.0), xycoords=("data", "axes fraction"),
                           xytext=(3, -10), textcoords="offset points", fontsize=7, color="grey")
        a.set(title=title, xlabel="epoch", ylabel=metric)
        a.legend(fontsize=8)
    return axes


# --------------------------------------------------------------------------- evaluation (helper C)
# Figures of `covidxr evaluate` / `compare`: confusion matrix with the figures beside it,
# ROC and precision-recall curves with the operating point, a reliability diagram, and a
# comparison chart with confidence-interval error bars.

def _class_arrays(predictions: pd.DataFrame, classes):
    index = {c: i for i, c in enumerate(classes)}
    y = predictions["label"].astype(str).map(index).to_numpy(dtype=int)
    probs = predictions[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    return y, probs


def _curve_targets(classes):
    """(class index, name) pairs to draw: the positive class for two classes, each class
    one-vs-rest for more."""
    return [(1, classes[1])] if len(classes) == 2 else list(enumerate(classes))


def plot_confusion_matrix(cm, classes, *, normalize=False, ax=None, title=None):
    """A confusion matrix (rows = true class, columns = predicted), counts or row-normalised.

    Args:
        cm: Array-like of shape (C, C).
        classes: The C class names.
        normalize: Divide each row by its total (each row then sums to 1).
    """
    ax = _axes(ax, figsize=(3.6, 3.2))
    cm = np.asarray(cm, dtype=float)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(shown.max(), 1))
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            dark = shown[i, j] > (0.5 if normalize else shown.max() / 2)
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true",
           title=title or ("row-normalised" if normalize else "counts"))
    return ax


def _figures_text(block: dict, *, limit=14) -> str:
    lines = []
    items = list(block["metrics"].items())
    if any("[" in name for name, _ in items):  # three classes: overall and macro figures
        items = [(n, f) for n, f in items if "[" not in n or n.endswith("[macro]")]
    for name, fig in items[:limit]:
        if fig["value"] is None or np.isnan(fig["value"]):
            lines.append(f"{name:<22} n/a")
        elif np.isnan(fig["ci_low"]):
            lines.append(f"{name:<22} {fig['value']:.3f}")
        else:
            lines.append(f"{name:<22} {fig['value']:.3f} [{fig['ci_low']:.3f}, {fig['ci_high']:.3f}]")
    return "\n".join(lines)


def plot_confusion_summary(result: dict, *, level="image"):
    """Counts, row-normalised confusion matrix and the figures with their intervals beside.

    Args:
        result: Output of :func:`covidxr.evaluate.evaluate_predictions`.
        level: ``"image"`` or ``"patient"``.

    Returns:
        The Matplotlib figure.
    """
    block = result[level]
    classes = result["classes"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1.3]})
    plot_confusion_matrix(block["confusion_matrix"], classes, ax=axes[0], title=f"counts ({level}s)")
    plot_confusion_matrix(block["confusion_matrix"], classes, normalize=True, ax=axes[1],
                          title=f"row-normalised ({level}s)")
    axes[2].axis("off")
    limit = 14
    head = (f"threshold {result['threshold']:.3f} (from validation)" if result.get("threshold") is not None
            else "decision: arg-max")
    axes[2].text(0, 1, f"{head}\n{int(result['bootstrap']['level'] * 100)}% CI, patient bootstrap\n\n"
                 + _figures_text(block, limit=limit), va="top", ha="left", family="monospace", fontsize=8,
                 transform=axes[2].transAxes)
    return fig


def _decisions(probs, classes, threshold):
    """Class index decided per row: the threshold on the positive class for two classes (when
    given), else arg-max."""
    if len(classes) == 2 and threshold is not None:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(axis=1)


def plot_roc(predictions: pd.DataFrame, classes, *, threshold=None, ax=None, title="ROC curve"):
    """ROC curve(s) with the operating point of the decision rule.

    Args:
        predictions: Frame with ``label`` and ``prob_<class>`` columns.
        classes: Class names in model output order.
        threshold: Two classes: the chosen threshold (marked on the curve). More classes:
            one-vs-rest curves, the arg-max decision marked on each.
    """
    from sklearn.metrics import auc, roc_curve

    ax = _axes(ax, figsize=(4.2, 4))
    classes = list(classes)
    y, probs = _class_arrays(predictions, classes)
    decided = _decisions(probs, classes, threshold)
    for i, name in _curve_targets(classes):
        yi = (y == i).astype(int)
        if yi.min() == yi.max():
            continue
        fpr, tpr, _ = roc_curve(yi, probs[:, i])
        line, = ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        pi = decided == i
        sens = (pi & (yi == 1)).sum() / max((yi == 1).sum(), 1)
        fp_rate = (pi & (yi == 0)).sum() / max((yi == 0).sum(), 1)
        marker = f"threshold {threshold:.3f}" if len(classes) == 2 and threshold is not None else "arg-max"
        ax.plot([fp_rate], [sens], "o", color=line.get_color(), markeredgecolor="black",
                label=f"operating point ({marker})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_precision_recall(predictions: pd.DataFrame, classes, *, threshold=None, ax=None,
                          title="Precision-recall curve"):
    """Precision-recall curve(s) with the operating point; the dashed line is prevalence."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    ax = _axes(ax, figsize=(4.2, 4))
    classes = list(classes)
    y, probs = _class_arrays(predictions, classes)
    decided = _decisions(probs, classes, threshold)
    for i, name in _curve_targets(classes):
        yi = (y == i).astype(int)
        if yi.min() == yi.max():
            continue
        precision, recall, _ = precision_recall_curve(yi, probs[:, i])
        ap = average_precision_score(yi, probs[:, i])
        line, = ax.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f})")
        pi = decided == i
        rec = (pi & (yi == 1)).sum() / max((yi == 1).sum(), 1)
        prec = (pi & (yi == 1)).sum() / pi.sum() if pi.sum() else np.nan
        ax.plot([rec], [prec], "o", color=line.get_color(), markeredgecolor="black",
                label="operating point")
        ax.axhline(yi.mean(), ls="--", lw=0.8, color=line.get_color())
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower left")
    return ax


def plot_calibration(predictions: pd.DataFrame, classes, *, n_bins=10, ax=None, title="Calibration"):
    """Reliability diagram: mean predicted probability against the observed share, per bin
    (quantile bins), for the positive class (two classes) or each class (one-vs-rest)."""
    from sklearn.calibration import calibration_curve

    ax = _axes(ax, figsize=(4.2, 4))
    classes = list(classes)
    y, probs = _class_arrays(predictions, classes)
    for i, name in _curve_targets(classes):
        yi = (y == i).astype(int)
        if yi.min() == yi.max():
            continue
        bins = int(max(2, min(n_bins, len(yi) // 5)))
        observed, predicted = calibration_curve(yi, probs[:, i], n_bins=bins, strategy="quantile")
        brier = float(np.mean((probs[:, i] - yi) ** 2))
        ax.plot(predicted, observed, "o-", label=f"{name} (Brier {brier:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    ax.set(xlabel="mean predicted probability", ylabel="observed share", title=title, xlim=(0, 1),
           ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="upper left")
    return ax


DEFAULT_COMPARISON_METRICS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "balanced_accuracy", "mcc")


def plot_comparison(table: pd.DataFrame, *, metrics=None, level=None):
    """Each metric with its interval as an error bar, one point per run (and level).

    Args:
        table: Output of :func:`covidxr.evaluate.compare_runs` (columns ``<m>``,
            ``<m>_ci_low``, ``<m>_ci_high``).
        metrics: Which metrics (default: ROC AUC, PR AUC, sensitivity, specificity, balanced
            accuracy, MCC, or their ``[macro]`` forms for three classes).
        level: Keep only ``"image"`` or ``"patient"`` rows; None shows both.

    Returns:
        The Matplotlib figure.
    """
    if level is not None:
        table = table[table["level"] == level]
    if metrics is None:
        metrics = [m for m in DEFAULT_COMPARISON_METRICS if m in table.columns]
        metrics = metrics or [f"{m}[macro]" for m in DEFAULT_COMPARISON_METRICS if f"{m}[macro]" in table.columns]
        metrics = metrics or [m for m in ("accuracy", "balanced_accuracy", "mcc") if m in table.columns]
    missing = [m for m in metrics if f"{m}_ci_low" not in table.columns]
    if missing:
        raise ValueError(f"Expected metrics present in the table. Received: metrics={missing}")
    labels = [f"{r}" + (f" ({lv})" if "level" in table.columns else "")
              for r, lv in zip(table["run"], table.get("level", [""] * len(table)))]
    n = len(metrics)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 0.35 * len(table) * rows + 1.6 * rows),
                             squeeze=False, layout="constrained")
    ypos = np.arange(len(table))
    for k, metric in enumerate(metrics):
        ax = axes[k // cols, k % cols]
        value = table[metric].to_numpy(dtype=float)
        low = table[f"{metric}_ci_low"].to_numpy(dtype=float)
        high = table[f"{metric}_ci_high"].to_numpy(dtype=float)
        err = np.vstack([np.clip(value - low, 0, None), np.clip(high - value, 0, None)])
        err = np.nan_to_num(err)
        colours = ["#2e86c1" if lv == "patient" else "#c0392b" for lv in table.get("level", ["image"] * len(table))]
        for yy, v, e0, e1, c in zip(ypos, value, err[0], err[1], colours):
            ax.errorbar(v, yy, xerr=[[e0], [e1]], fmt="o", color=c, capsize=3)
        ax.set_yticks(ypos, labels if k % cols == 0 else [""] * len(labels), fontsize=7)
        ax.invert_yaxis()
        ax.set(title=metric, xlim=(min(0, np.nanmin(low) if np.isfinite(low).any() else 0) - 0.02, 1.02))
        ax.grid(axis="x", alpha=0.3)
    for k in range(n, rows * cols):
        axes[k // cols, k % cols].axis("off")
    fig.suptitle("Runs compared (95% CI error bars; red = per image, blue = per patient)", fontsize=10)
    return fig


def write_evaluation_figures(predictions: pd.DataFrame, result: dict, out_dir) -> list[Path]:
    """Write an evaluation's figures into ``out_dir``: confusion matrices (per image and per
    patient) with the figures beside them, ROC, precision-recall and calibration curves
    (per image and per patient).

    Args:
        predictions: Scored rows (``patient``, ``label``, ``prob_<class>``).
        result: Output of :func:`covidxr.evaluate.evaluate_predictions`.

    Returns:
        The PNG paths written.
    """
    from .metrics import patient_frame

    out = Path(out_dir)
    classes = result["classes"]
    threshold = result.get("threshold")
    per_patient = patient_frame(predictions, classes)
    written = []
    for level, frame in (("image", predictions), ("patient", per_patient)):
        written.append(_save(plot_confusion_summary(result, level=level), out / f"confusion_{level}.png"))
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
        plot_roc(frame, classes, threshold=threshold, ax=axes[0], title=f"ROC ({level}s)")
        plot_precision_recall(frame, classes, threshold=threshold, ax=axes[1],
                              title=f"Precision-recall ({level}s)")
        plot_calibration(frame, classes, ax=axes[2], title=f"Calibration ({level}s)")
        written.append(_save(fig, out / f"curves_{level}.png"))
    return written


# --------------------------------------------------------------------------- Grad-CAM examples

#: Rows of :func:`plot_gradcam_examples`: (key, title, note when none).
GRADCAM_CATEGORIES = (
    ("TP", "true positives", "no true positives"),
    ("FP", "false positives", "no false positives"),
    ("FN", "false negatives", "no false negatives"),
)


def select_gradcam_examples(run_dir, *, n=3, part="test", seed=0, threshold_method="youden", data_dir=None):
    """Pick true positives, false positives and false negatives of a run and compute their
    Grad-CAM maps for the positive class.

    Decisions use the run's validation threshold (:func:`covidxr.evaluate.validation_threshold`;
    three classes: arg-max, positive = ``covid``). Images are read from the dataset the run was
    trained on (or ``data_dir``) and preprocessed as the run's config says
    (:func:`covidxr.predict.preprocessing_settings`).

    Args:
        run_dir: A run folder (``config.json``, ``predictions.csv``, ``model.keras``).
        n: Examples per category (at most).
        part: Which part of ``predictions.csv`` to draw from (``test`` or ``val``).
        seed: Seed of the random choice within each category.
        threshold_method: How the threshold is chosen on the validation part.
        data_dir: Where the dataset is now, if it moved since training.

    Returns:
        A dict: ``table`` (DataFrame of the chosen rows: ``image, patient, label, category,
        prob`` (from predictions.csv), ``model_prob`` (recomputed from the preprocessed image)),
        ``images`` uint8 (k, S, S), ``maps`` float32 (k, S, S) in [0, 1], ``counts``
        ({category: rows available}), ``threshold``, ``positive_class``, ``run``.
    """
    from .data import load_dataset
    from .evaluate import read_run, validation_threshold
    from .gradcam import gradcam
    from .images import load_image, preprocess
    from .predict import preprocessing_settings
    from .train import load_run

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Expected n to be an integer >= 1. Received: n={n!r}")
    run = Path(run_dir)
    config, preds = read_run(run, need_model=True)
    classes = [str(c) for c in config["classes"]]
    positive = classes[1] if len(classes) == 2 else ("covid" if "covid" in classes else classes[1])
    pos_index = classes.index(positive)
    rows = preds[preds["part"].astype(str) == part].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"Expected rows of part {part!r} in the run's predictions.csv. "
                         f"Received: parts={sorted(preds['part'].astype(str).unique())}")
    info = validation_threshold(preds, classes=classes, method=threshold_method)
    probs = rows[[f"prob_{c}" for c in classes]].to_numpy(float)
    if info is not None:
        threshold = float(info["threshold"])
        called = probs[:, pos_index] >= threshold
    else:
        threshold = None
        called = probs.argmax(axis=1) == pos_index
    truth = rows["label"].astype(str).to_numpy() == positive
    masks = {"TP": truth & called, "FP": ~truth & called, "FN": truth & ~called}
    rng = np.random.default_rng(seed)
    chosen = []
    for key, _, _ in GRADCAM_CATEGORIES:
        idx = np.flatnonzero(masks[key])
        if len(idx) > n:
            idx = np.sort(rng.choice(idx, size=n, replace=False))
        for i in idx:
            chosen.append({"image": str(rows.at[i, "image"]), "patient": str(rows.at[i, "patient"]),
                           "label": str(rows.at[i, "label"]), "category": key, "prob": float(probs[i, pos_index])})
    table = pd.DataFrame(chosen, columns=["image", "patient", "label", "category", "prob"])
    settings = preprocessing_settings(config)
    size = settings["image_size"]
    images = np.zeros((len(table), size, size), np.uint8)
    maps = np.zeros((len(table), size, size), np.float32)
    table["model_prob"] = np.nan
    if len(table):
        def blank(value):
            return None if value is None or str(value).lower() in ("", "all", "none") else value

        frame = load_dataset(data_dir if data_dir is not None else config.get("data_dir"), task=None,
                             layout=config.get("layout", "auto"), modality=blank(config.get("modality")),
                             views=config.get("views", "frontal"), image_col=config.get("image_col", "path"),
                             label_col=config.get("label_col", "label"),
                             patient_col=blank(config.get("patient_col", "patient")))
        paths = frame.drop_duplicates("image").set_index("image")["path"]
        missing = [i for i in table["image"] if i not in paths.index]
        if missing:
            raise FileNotFoundError(
                "Expected the run's images in its dataset (pass data_dir= if the dataset moved). "
                f"Received: missing={missing[:5]}"
            )
        for k, key in enumerate(table["image"]):
            images[k] = preprocess(load_image(paths[key]), **settings)
        model, _ = load_run(run, config=config)
        maps, model_probs = gradcam(model, images[..., None], class_index=pos_index)
        table["model_prob"] = model_probs[:, pos_index].astype(float)
    return {"table": table, "images": images, "maps": maps, "threshold": threshold, "positive_class": positive,
            "counts": {k: int(m.sum()) for k, m in masks.items()}, "run": run.name, "part": part}


def plot_gradcam_examples(run_dir, *, n=3, part="test", seed=0, threshold_method="youden", data_dir=None,
                          examples=None):
    """Grad-CAM for the positive class on true positives, false positives and false negatives.

    One row per category (TP / FP / FN), ``n`` image pairs per row: the preprocessed image
    the model saw, with its label and probability, and the Grad-CAM overlay. A category
    without examples is drawn as empty panels with a note. The figure carries the dataset
    attribution (:data:`DATASET_ATTRIBUTION`).

    Args:
        run_dir: A run folder.
        n, part, seed, threshold_method, data_dir: See :func:`select_gradcam_examples`.
        examples: A :func:`select_gradcam_examples` result to draw (skips recomputing).

    Returns:
        The Matplotlib figure (its ``gradcam_examples`` attribute holds the examples' table).
    """
    from . import RESEARCH_ONLY
    from .gradcam import overlay

    ex = examples or select_gradcam_examples(run_dir, n=n, part=part, seed=seed,
                                             threshold_method=threshold_method, data_dir=data_dir)
    n = max(int(n), int(ex["table"].groupby("category").size().max()) if len(ex["table"]) else 1)
    fig, axes = plt.subplots(len(GRADCAM_CATEGORIES), 2 * n, figsize=(2.0 * 2 * n, 2.35 * len(GRADCAM_CATEGORIES) + 0.9),
                             squeeze=False, layout="constrained")
    table = ex["table"].reset_index(drop=True)
    threshold = ex["threshold"]
    rule = (f"called {ex['positive_class']} when p >= {threshold:.3f} (validation threshold)"
            if threshold is not None else "arg-max decision")
    for r, (key, title, empty_note) in enumerate(GRADCAM_CATEGORIES):
        picked = table.index[table["category"] == key].tolist()
        for c in range(2 * n):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            for spine in axes[r, c].spines.values():
                spine.set_visible(False)
        axes[r, 0].set_ylabel(f"{key}: {title}\n({ex['counts'][key]} in {ex['part']})", fontsize=8)
        if not picked:
            axes[r, 0].text(0.02, 0.5, f"{empty_note}\nin the {ex['part']} part", fontsize=8,
                            transform=axes[r, 0].transAxes, va="center", ha="left", color="#555555")
            continue
        for j, k in enumerate(picked):
            row = table.loc[k]
            axes[r, 2 * j].imshow(ex["images"][k], cmap="gray", vmin=0, vmax=255)
            axes[r, 2 * j].set_title(f"{row['label']}, p={row['prob']:.3f}", fontsize=7)
            axes[r, 2 * j + 1].imshow(overlay(ex["images"][k], ex["maps"][k]))
            empty_map = not float(np.max(ex["maps"][k])) > 0
            axes[r, 2 * j + 1].set_title("Grad-CAM (no positive evidence)" if empty_map else "Grad-CAM",
                                         fontsize=7)
    fig.suptitle(f"Grad-CAM ({ex['positive_class']}) · {ex['run']}\n{rule}", fontsize=9)
    fig.supxlabel(f"{DATASET_ATTRIBUTION}\n{RESEARCH_ONLY}", fontsize=6.5)
    fig.gradcam_examples = table
    return fig
