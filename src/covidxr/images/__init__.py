"""Image decoding, preprocessing and the decode-once cache.
Must not import Keras or draw: uint8 arrays in and out (figures of them are :mod:`covidxr.figures`).

Every image the dataset holds, whatever its format, becomes one ``uint8`` grey channel:

* :func:`load_image` opens PNG/JPEG/BMP/TIFF files in any PIL mode (RGB, L, LA, RGBA, P,
  1, CMYK, I;16, I, F; EXIF orientation applied) and DICOM files (``pydicom``: modality LUT
  or rescale slope/intercept, the file's window or VOI LUT, MONOCHROME1 inverted).
* :func:`preprocess` enhances contrast (optional: CLAHE or histogram equalisation from
  scikit-image) and makes the image square, keeping its aspect ratio (pad or centre-crop).
* :func:`build_cache` decodes and preprocesses each image once into a ``uint8`` array on disk
  (``images.npy``, read back as a memmap) with the rows it was built from, keyed by the
  files and the settings; :class:`ImageCache` reads it back, even without the source files.
  ``cache.json`` records the source files' sizes and modification times and the sha256 of
  ``images.npy`` and ``rows.csv``: a damaged cache is rebuilt (or, opened on its own,
  refused), a changed dataset gets a new cache with a warning saying what changed.

The step to three float channels and each backbone's own ``preprocess_input`` happen inside
the model (:mod:`covidxr.models`), so the cache is shared by every backbone.

The package holds :mod:`covidxr.images.decode` (decoding and preprocessing),
:mod:`covidxr.images.cache` (the cache, which uses the former) and :mod:`covidxr.images.hashes`
(content hashes of every image in a per-file index, and the frame with its split groups) and
:mod:`covidxr.images.feature_store` (the frozen backbone features of cached images, stored once
per backbone and settings beside the cache), with :mod:`covidxr.images.pool` (per-image work on
all cores, in order, for the cache and the hashes). The figures of preprocessing
are in :mod:`covidxr.figures`.
"""

from .cache import (
    CACHE_FORMAT,
    DEFAULT_CACHE_DIR,
    ImageCache,
    build_cache,
    cache_key,
    clear_caches,
    list_caches,
    resolve_cache_dir,
)
from .decode import (
    CONTRASTS,
    DECODER_VERSION,
    DECODING_RULE,
    DICOM_EXTENSIONS,
    MIN_IMAGE_SIDE,
    RESIZES,
    check_settings,
    load_image,
    load_radiograph,
    png_significant_bits,
    preprocess,
)
from .feature_store import (FEATURE_STORE_FORMAT, FEATURES_DIR, FeatureStore, clear_feature_store, feature_key,
                            image_ids)
from .hashes import HASH_COLUMNS, HashIndex, candidate_pairs, group_frame, image_hashes, load_grouped, pixel_hashes

__all__ = [
    "CACHE_FORMAT",
    "CONTRASTS",
    "DECODER_VERSION",
    "DECODING_RULE",
    "FEATURES_DIR",
    "FEATURE_STORE_FORMAT",
    "FeatureStore",
    "HASH_COLUMNS",
    "HashIndex",
    "DEFAULT_CACHE_DIR",
    "DICOM_EXTENSIONS",
    "MIN_IMAGE_SIDE",
    "RESIZES",
    "ImageCache",
    "build_cache",
    "cache_key",
    "feature_key",
    "check_settings",
    "clear_caches",
    "clear_feature_store",
    "candidate_pairs",
    "group_frame",
    "image_hashes",
    "image_ids",
    "list_caches",
    "load_grouped",
    "load_image",
    "load_radiograph",
    "pixel_hashes",
    "png_significant_bits",
    "preprocess",
    "resolve_cache_dir",
]
