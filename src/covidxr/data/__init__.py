"""Dataset readers, label tasks, split groups, frame summaries and group-level splits.
Must not import Keras, decode pixels or write anything but split files: tables in, tables out.

Five layouts are read into one frame with one row per usable image:

* the COVID-19 image data collection (``metadata.csv`` + ``images/``), flat findings
  ("COVID-19, ARDS") as in the 2020 snapshot or hierarchical ones
  ("Pneumonia/Viral/COVID-19") as upstream writes them now;
* one folder per class (``root/<class>/*.png``), as most public collections ship;
* a CSV manifest with an image, a label and (optionally) a patient column;
* COVIDx (list files ``train.txt``/``test.txt`` and ``train/``, ``test/``) and COVID-QU-Ex
  (``{Train,Val,Test}/<class>/images`` and ``lung masks``), with their official split in an
  ``official_part`` column (:mod:`covidxr.data.layouts`).

The frame's columns are :data:`FRAME_COLUMNS`; a blank patient id makes the image its own
patient. The split unit is the **group** (:mod:`covidxr.data.groups`): patients that share an
image (by content hash, computed in :mod:`covidxr.images.hashes`) are merged into one group, or
with ``group_by="source"`` every source joins its patients' groups. Splits never put one group
(so never one patient) in two parts.

The package holds these modules, each importing only the ones before it:

* :mod:`covidxr.data.notices`: :class:`DataWarning` and the loaders' one-line summary of them
  (:func:`~covidxr.data.notices.summarise`);
* :mod:`covidxr.data.tasks`: label tasks, finding categories, view names (``"unknown"`` for
  rows without a view) and :func:`none_if_blank`;
* :mod:`covidxr.data.readers`: the readers (:func:`load_dataset`);
* :mod:`covidxr.data.layouts`: the COVIDx and COVID-QU-Ex readers, registered with the readers;
* :mod:`covidxr.data.near`: every pair of perceptual hashes within a Hamming distance, exactly,
  without comparing all pairs (multi-index hashing);
* :mod:`covidxr.data.groups`: duplicate pairs, union–find split groups, merged groups and
  mixed-label patients (:func:`mixed_label_patients`, :func:`drop_mixed_patients`);
* :mod:`covidxr.data.summaries`: per-task counts, source overlap and the ``eda`` text;
* :mod:`covidxr.data.splits`: group-level splits and checked split files.
"""

from .notices import DataWarning
from .readers import (
    DEFAULT_DATA_DIR,
    LAYOUTS,
    OPTIONAL_COLUMNS,
    detect_layout,
    load_dataset,
    read_csv,
    read_folders,
    read_manifest,
    read_metadata,
    require_columns,
    resolve_data_dir,
)
from .layouts import read_covid_qu_ex, read_covidx
from .groups import drop_mixed_patients, merged_groups, mixed_label_patients
from .summaries import source_overlap, summary_table, task_counts
from .splits import (SPLIT_COLUMNS, SPLIT_VERSION, SmallValidationWarning, check_parts, kfold_split, official_split,
                     read_split, split_frame, split_patients, split_sizes, write_split)
from .tasks import (
    CATEGORIES,
    FRAME_COLUMNS,
    FRONTAL_VIEWS,
    IMAGE_EXTENSIONS,
    KNOWN_VIEWS,
    LABEL_ALIASES,
    TASKS,
    UNKNOWN_VIEW,
    UNLABELLED,
    Task,
    alias_category,
    finding_category,
    get_task,
    none_if_blank,
    parse_views,
    views_key,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_DATA_DIR",
    "DataWarning",
    "LAYOUTS",
    "OPTIONAL_COLUMNS",
    "FRAME_COLUMNS",
    "FRONTAL_VIEWS",
    "IMAGE_EXTENSIONS",
    "KNOWN_VIEWS",
    "LABEL_ALIASES",
    "SPLIT_COLUMNS",
    "SPLIT_VERSION",
    "SmallValidationWarning",
    "TASKS",
    "UNKNOWN_VIEW",
    "UNLABELLED",
    "Task",
    "alias_category",
    "check_parts",
    "detect_layout",
    "drop_mixed_patients",
    "finding_category",
    "get_task",
    "kfold_split",
    "load_dataset",
    "merged_groups",
    "mixed_label_patients",
    "none_if_blank",
    "official_split",
    "parse_views",
    "read_covid_qu_ex",
    "read_covidx",
    "read_csv",
    "read_folders",
    "read_manifest",
    "read_metadata",
    "read_split",
    "require_columns",
    "resolve_data_dir",
    "source_overlap",
    "split_frame",
    "split_patients",
    "split_sizes",
    "summary_table",
    "task_counts",
    "views_key",
    "write_split",
]
