"""Image decoding, preprocessing and the decode-once cache.

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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

__all__ = [
    "CACHE_FORMAT",
    "CONTRASTS",
    "DEFAULT_CACHE_DIR",
    "DICOM_EXTENSIONS",
    "MIN_IMAGE_SIDE",
    "RESIZES",
    "ImageCache",
    "build_cache",
    "cache_key",
    "clear_caches",
    "list_caches",
    "load_image",
    "plot_augmentations",
    "plot_contrast",
    "plot_preprocessing",
    "preprocess",
    "resolve_cache_dir",
]

#: Where caches go when neither ``cache_dir`` nor ``$COVIDXR_CACHE_DIR`` says.
DEFAULT_CACHE_DIR = Path("data/interim")
#: Ways to make an image square: ``pad`` keeps all of it (black borders), ``crop`` keeps the
#: centre square.
RESIZES = ("pad", "crop")
#: Contrast enhancements: None (off), ``clahe`` (scikit-image ``equalize_adapthist``) and
#: ``equalize`` (global histogram equalisation, ``equalize_hist``).
CONTRASTS = (None, "clahe", "equalize")
DICOM_EXTENSIONS = (".dcm", ".dicom")
#: Version of the on-disk layout; part of every key, so a new layout never reads an old cache.
CACHE_FORMAT = 1

#: Images whose shorter side is below this many pixels (a 1x1 placeholder, a thin strip)
#: are not radiographs: :func:`build_cache` skips them (or raises, ``strict=True``).
MIN_IMAGE_SIDE = 16

_META = "cache.json"
_IMAGES = "images.npy"
_ROWS = "rows.csv"
_TMP_PREFIX = ".tmp-"
#: A previous cache of the same settings whose images overlap this much (Jaccard index)
#: is taken for an earlier build of the same dataset when telling what changed.
_SAME_DATASET = 0.9


# --------------------------------------------------------------------------- decoding

def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _scale_integers(array: np.ndarray) -> np.ndarray:
    """Scale integer grey levels of more than 8 bits to ``uint8``.

    The bit depth is the smallest of 8, 10, 12, 14 and 16 bits that holds the image's
    maximum, so 12-bit data stored in 16-bit PNGs is not left nearly black and full-range
    16-bit data maps 65535 to 255.
    """
    array = array.astype(np.float64)
    low = min(float(array.min()), 0.0)
    if low < 0:  # signed data: shift to zero
        array = array - low
    top = float(array.max())
    bits = next((b for b in (8, 10, 12, 14, 16) if top < 2 ** b), int(np.ceil(np.log2(top + 1))))
    return np.clip(np.rint(array * (255.0 / (2 ** bits - 1))), 0, 255).astype(np.uint8)


def _min_max(array: np.ndarray, low=None, high=None) -> np.ndarray:
    array = array.astype(np.float64)
    low = float(array.min()) if low is None else float(low)
    high = float(array.max()) if high is None else float(high)
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.clip(np.rint((array - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def _pil_to_grey(img: Image.Image) -> np.ndarray:
    """One PIL image (any mode) to a uint8 (H, W) grey array."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(img)
        if mode == "F":
            return _min_max(array)
        return _scale_integers(array)
    # RGB, RGBA, LA, P, PA, 1, CMYK (Adobe-inverted CMYK is undone by PIL's JPEG reader),
    # YCbCr, LAB, HSV: PIL's ITU-R 601-2 luma. Transparency is ignored.
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
    if mode in ("LAB", "HSV"):
        img = img.convert("RGB")
    return np.asarray(img.convert("L"), dtype=np.uint8).copy()


def _first(value):
    """First item of a possibly multi-valued DICOM element."""
    try:
        return float(value[0])
    except (TypeError, IndexError):
        return float(value)


def _require(module, purpose):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{purpose} needs the optional package '{module}': pip install 'covidxr[extras]'"
        ) from err


def _load_dicom(path: Path) -> np.ndarray:
    pydicom = _require("pydicom", "reading DICOM files")
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise ValueError("the DICOM file holds no pixel data")
    # PIL's decompression-bomb limit, checked before pydicom allocates the pixel buffer
    pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("NumberOfFrames", 1) or 1)
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"the DICOM header claims {pixels} pixels, more than the decompression-bomb "
                         f"limit of {Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS)")
    array = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        array = array[0]
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # colour DICOM (RGB, YBR_*, PALETTE COLOR): to RGB, then PIL's luma.
        # (pydicom 3's pixel_array already converts YBR_* to RGB.)
        try:
            from pydicom.pixels import apply_color_lut
        except ImportError:  # pydicom 2.x
            from pydicom.pixel_data_handlers.util import apply_color_lut

        if photometric == "PALETTE COLOR":
            array = apply_color_lut(array, ds)
        if array.ndim != 3:
            raise ValueError(f"photometric interpretation {photometric} with pixel shape {array.shape}")
        return _pil_to_grey(Image.fromarray(_min_max(array) if array.dtype != np.uint8 else array))
    values = apply_modality_lut(array, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        # DICOM PS3.3 C.11.2.1.2.1, linear: x <= c - 0.5 - (w-1)/2 -> black, x > c - 0.5 + (w-1)/2 -> white
        width = max(width, 1.0)
        scaled = ((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5) * 255.0
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    elif "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        grey = _min_max(apply_voi(values, ds), 0, 2 ** int(lut.LUTDescriptor[2]) - 1)
    else:
        grey = _min_max(values)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def load_image(path, *, strict=True) -> np.ndarray | None:
    """Open one image file as a ``uint8`` grey array.

    PIL formats in any mode (RGB, L, LA, RGBA, P, 1, CMYK JPEG, I;16 and other 16-bit
    modes scaled to 8 bits, EXIF-rotated JPEG turned upright) and DICOM files (by extension
    ``.dcm``/``.dicom`` or by the ``DICM`` magic; rescale slope/intercept or modality LUT,
    then the file's window, else its VOI LUT, else its full range; MONOCHROME1 inverted).
    An image above PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, DICOM
    included) is refused before its pixels are allocated. Of a multi-frame file (animated
    GIF, multi-page TIFF, multi-frame DICOM) the first frame is used. Nothing is written.

    Args:
        path: The file.
        strict: If True, a missing, corrupt, truncated, empty, non-image or oversized file
            raises; if False it gives a warning naming the file and None.

    Returns:
        A ``uint8`` array of shape (H, W), or None (``strict=False`` only) for a bad file.

    Raises:
        FileNotFoundError: ``path`` does not exist (``strict=True``).
        ValueError: the file cannot be decoded as an image, or ``path`` is not a regular
            file (``strict=True``).
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():   # never opened: a folder, a device (/dev/zero) or a pipe could hang or flood
            kind = "a folder" if path.is_dir() else "a device, pipe or socket"
            if strict:
                raise ValueError(f"Expected a regular image file; this path is {kind}. Received: path='{path}'")
            warnings.warn(f"Skipping a path that is not a regular file ({kind}): {path}", stacklevel=2)
            return None
        if strict:
            raise FileNotFoundError(f"Expected an image file; none exists there. Received: path='{path}'")
        warnings.warn(f"Skipping a missing image file: {path}", stacklevel=2)
        return None
    try:
        if path.stat().st_size == 0:
            raise ValueError("the file is empty (0 bytes)")
        if _is_dicom(path):
            grey = _load_dicom(path)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    img.load()
                    img = ImageOps.exif_transpose(img)
                    grey = _pil_to_grey(img)
        if grey.ndim != 2 or grey.size == 0:
            raise ValueError(f"decoded to an array of shape {grey.shape}, not (H, W)")
    except Exception as err:  # noqa: BLE001 - any decoder failure (PIL, pydicom, its pixel handlers) is a bad file
        if isinstance(err, ImportError):  # a missing optional package is not a bad file
            raise
        message = f"Expected a readable image file; this one cannot be decoded ({type(err).__name__}: {err})."
        if strict:
            raise ValueError(f"{message} Received: path='{path}'") from err
        warnings.warn(f"Skipping an unreadable image file: {path} ({type(err).__name__}: {err})", stacklevel=2)
        return None
    return grey


# --------------------------------------------------------------------------- preprocessing

def _check_settings(image_size, resize, contrast):
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"Expected image_size to be an integer >= 8. Received: image_size={image_size!r}")
    if resize not in RESIZES:
        raise ValueError(f"Unknown resize. Expected one of {RESIZES}. Received: resize={resize!r}")
    if contrast not in CONTRASTS:
        raise ValueError(f"Unknown contrast. Expected one of {CONTRASTS}. Received: contrast={contrast!r}")
    return int(image_size)


def _enhance(grey: np.ndarray, contrast) -> np.ndarray:
    if contrast is None or grey.max() == grey.min():
        return grey
    exposure = _require("skimage.exposure", f"contrast={contrast!r}")

    if contrast == "clahe":
        out = exposure.equalize_adapthist(grey, clip_limit=0.01)
    else:
        out = exposure.equalize_hist(grey)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def preprocess(image, *, image_size, resize="pad", contrast=None) -> np.ndarray:
    """Make a grey image square at ``image_size``, keeping its aspect ratio.

    ``pad`` scales the longer side to ``image_size`` and centres the image on black;
    ``crop`` scales the shorter side to ``image_size`` and keeps the centre square.
    Contrast enhancement runs after scaling and before padding, so the borders do not count
    in its histogram.

    Args:
        image: ``uint8`` array (H, W) or (H, W, 1), as :func:`load_image` returns.
        image_size: Side of the output square in pixels.
        resize: ``"pad"`` or ``"crop"``.
        contrast: None, ``"clahe"`` or ``"equalize"``.

    Returns:
        ``uint8`` array of shape (image_size, image_size).

    Raises:
        ValueError: on a bad option or an image that is not (H, W) ``uint8``.
    """
    size = _check_settings(image_size, resize, contrast)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(
            "Expected a uint8 grey image of shape (H, W). "
            f"Received: image with shape={image.shape}, dtype={image.dtype}"
        )
    img = Image.fromarray(image)
    if resize == "crop":
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR, centering=(0.5, 0.5))
        return _enhance(np.asarray(img, dtype=np.uint8), contrast)
    img = ImageOps.contain(img, (size, size), method=Image.Resampling.BILINEAR)
    inner = _enhance(np.asarray(img, dtype=np.uint8), contrast)
    out = np.zeros((size, size), np.uint8)
    top, left = (size - inner.shape[0]) // 2, (size - inner.shape[1]) // 2
    out[top: top + inner.shape[0], left: left + inner.shape[1]] = inner
    return out


# --------------------------------------------------------------------------- cache

def resolve_cache_dir(cache_dir=None) -> Path:
    """Where caches live: ``cache_dir``, else ``$COVIDXR_CACHE_DIR``, else ``data/interim``."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get("COVIDXR_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return DEFAULT_CACHE_DIR


def _file_stamp(path) -> list:
    try:
        stat = os.stat(path)
    except OSError:
        return [None, None]
    return [stat.st_size, stat.st_mtime_ns]


def _sources(frame) -> list:
    """``[image, size, mtime_ns]`` of each row's file (None, None when missing), sorted."""
    return sorted([str(img), *_file_stamp(path)] for img, path in zip(frame["image"], frame["path"]))


def _key(files, size, resize, contrast) -> str:
    payload = json.dumps({"format": CACHE_FORMAT, "image_size": size, "resize": resize,
                          "contrast": contrast, "files": files}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{size}-{resize}-{contrast or 'none'}-{digest}"


def cache_key(frame: pd.DataFrame, *, image_size, resize="pad", contrast=None) -> str:
    """The key of the cache ``frame`` and the settings give.

    It changes when the settings, the set of images (``image`` column) or any file's size
    or modification time change; it does not depend on row order or on labels, so label
    tasks over the same images share one cache.

    Returns:
        ``"<image_size>-<resize>-<contrast>-<12 hex digits>"``.
    """
    size = _check_settings(image_size, resize, contrast)
    _check_frame(frame)
    return _key(_sources(frame), size, resize, contrast)


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _check_frame(frame):
    if not isinstance(frame, pd.DataFrame) or not {"image", "path"} <= set(frame.columns):
        cols = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise ValueError(
            "Expected a frame with 'image' and 'path' columns (as covidxr.data.load_dataset "
            f"returns). Received: frame columns={cols}"
        )
    if frame["image"].duplicated().any():
        dup = frame.loc[frame["image"].duplicated(), "image"].iloc[0]
        raise ValueError(f"Expected each image once in the frame. Received: duplicate image={dup!r}")


class ImageCache:
    """A decode-once image store: ``uint8`` images on disk and the rows they came from.

    Attributes:
        path: The cache folder (``<cache_dir>/<key>``).
        key: The cache's key (see :func:`cache_key`).
        images: ``uint8`` array (read-only memmap) of shape (n, image_size, image_size, 1).
        rows: DataFrame with one row per cached image, same order as ``images``.
        settings: ``{"image_size": int, "resize": str, "contrast": str | None}``.
        skipped: ``image`` keys of the rows whose file could not be decoded.
    """

    def __init__(self, path, images, rows, settings, *, key, skipped=()):
        self.path = Path(path)
        self.key = key
        self.images = images
        self.rows = rows.reset_index(drop=True)
        self.settings = dict(settings)
        self.skipped = list(skipped)
        self._index = None
        self._files = None   # [image, size, mtime_ns] of the source files it was built from

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"ImageCache(key={self.key!r}, images={len(self)}, path='{self.path}')"

    @classmethod
    def open(cls, path, *, mmap=True, verify=True) -> "ImageCache":
        """Load a complete cache folder; its source image files need not exist.

        The cache's own record decides whether it is sound: ``cache.json`` must parse and
        be marked complete, ``images.npy`` and ``rows.csv`` must match the sha256 checksums
        it recorded when the cache was built (``verify``), and the rows must match the
        images (count, shape, unique ``image`` keys). Verifying reads the whole image file
        once: about 0.6 ms per MiB (527 images at 224 px, 25 MiB: 19 ms with the check,
        2 ms without), so about 1 s for 30,000 images at 224 px.

        Args:
            path: The cache folder (one that :func:`build_cache` wrote).
            mmap: Read the images as a read-only memmap (default) or into memory.
            verify: Check the files' checksums (default). False skips only that check
                (a quick listing); the structure is checked either way.

        Raises:
            FileNotFoundError: ``path`` is not a folder.
            ValueError: the folder is not a complete cache, or it is damaged (a checksum
                mismatch, a truncated or unparsable file).
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"Expected a cache folder. Received: path='{path}'")
        meta_file = path / _META
        try:
            meta = json.loads(meta_file.read_text())
            if not isinstance(meta, dict) or not meta.get("complete") or meta.get("format") != CACHE_FORMAT:
                raise ValueError("not marked complete, or another format")
            if verify:
                checksums = meta.get("checksums")
                if not isinstance(checksums, dict):
                    raise ValueError("cache.json records no checksums (an older or foreign cache)")
                for name in (_IMAGES, _ROWS):
                    if _sha256(path / name) != checksums.get(name):
                        raise ValueError(f"{name} does not match the sha256 checksum recorded when the "
                                         "cache was built: the file is damaged or was changed")
            dtypes = meta["dtypes"]
            rows = pd.read_csv(path / _ROWS, dtype={c: "str" for c, t in dtypes.items() if t == "str"})
            images = np.load(path / _IMAGES, mmap_mode="r" if mmap else None, allow_pickle=False)
            size = meta["settings"]["image_size"]
            if images.shape != (len(rows), size, size, 1) or images.dtype != np.uint8:
                raise ValueError(f"images of shape {images.shape} for {len(rows)} rows")
            if "n_images" in meta and meta["n_images"] != len(rows):
                raise ValueError(f"{len(rows)} rows, but cache.json records {meta['n_images']} images")
            if "image" not in rows.columns or rows["image"].duplicated().any():
                raise ValueError("rows.csv lacks a unique 'image' column")
        except (OSError, ValueError, KeyError, TypeError, EOFError) as err:  # JSON/CSV parser errors are ValueErrors
            raise ValueError(
                f"Expected a complete image cache (written by build_cache, undamaged); this folder is "
                f"not one ({type(err).__name__}: {err}). Received: path='{path}'"
            ) from err
        cache = cls(path, images, rows, meta["settings"], key=meta["key"], skipped=meta.get("skipped", ()))
        cache._files = meta.get("files")
        return cache

    def select(self, images) -> np.ndarray:
        """The cached images of the given ``image`` keys, in that order.

        Args:
            images: Sequence of ``image`` keys (the frame's ``image`` column).

        Returns:
            ``uint8`` array of shape (len(images), image_size, image_size, 1).

        Raises:
            ValueError: a key is not in the cache (e.g. its file could not be decoded).
        """
        if self._index is None:
            self._index = pd.Index(self.rows["image"])
        keys = list(images)
        idx = self._index.get_indexer(keys)
        if (idx < 0).any():
            missing = [k for k, i in zip(keys, idx) if i < 0]
            raise ValueError(
                f"Expected images held by the cache; {len(missing)} are not in it. "
                f"Received: images={missing[:5]}"
            )
        return np.asarray(self.images[idx])

    def labels(self, classes) -> np.ndarray:
        """Class indices (n,) of the rows' ``label`` column in the order ``classes`` gives."""
        lookup = {name: i for i, name in enumerate(classes)}
        unknown = sorted(set(self.rows["label"]) - set(lookup))
        if unknown:
            raise ValueError(f"Expected labels among {tuple(classes)}. Received: labels={unknown}")
        return self.rows["label"].map(lookup).to_numpy(np.int64)


def _rows_for(rows_on_disk: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The caller's rows, in the cache's order (labels may come from another task)."""
    order = pd.Index(frame["image"]).get_indexer(rows_on_disk["image"])
    return frame.iloc[order].reset_index(drop=True)


def build_cache(frame: pd.DataFrame, *, image_size, resize="pad", contrast=None, cache_dir=None,
                strict=False, progress=True) -> ImageCache:
    """Decode and preprocess every image of ``frame`` once, into a cache on disk.

    A complete cache with the same key (see :func:`cache_key`) is reused once it passes
    :meth:`ImageCache.open`'s checks (checksums of its files) and its recorded source
    stamps equal the files' current sizes and modification times; a damaged cache is
    rebuilt with a warning. When the dataset changed since an earlier cache of the same
    settings was built (files modified, added or removed), a warning says what changed and
    a new cache is built (the old one stays until :func:`clear_caches`). A new cache is
    written to a temporary folder beside it and renamed into place when complete, so an
    interrupted build never leaves a cache another run would use. Nothing is written
    outside ``cache_dir``.

    Args:
        frame: Rows with ``image`` (key) and ``path`` (file) columns, as
            :func:`covidxr.data.load_dataset` returns; every column is stored with the cache.
        image_size: Side of the square images in pixels.
        resize: ``"pad"`` or ``"crop"`` (see :func:`preprocess`).
        contrast: None, ``"clahe"`` or ``"equalize"``.
        cache_dir: Parent folder of caches (see :func:`resolve_cache_dir`).
        strict: If True, a bad image file (missing, undecodable, or with a side below
            :data:`MIN_IMAGE_SIDE` pixels) raises and nothing is written; if False it is
            skipped with a warning naming it, and left out of the cache's rows.
        progress: Show a tqdm progress bar.

    Returns:
        The :class:`ImageCache`; its ``rows`` are ``frame``'s rows (in cache order).

    Raises:
        ValueError: bad options, a frame without ``image``/``path``, a bad file (strict), or
            no image could be decoded.
        FileNotFoundError: a missing file (strict).
    """
    size = _check_settings(image_size, resize, contrast)
    _check_frame(frame)
    files = _sources(frame)
    key = _key(files, size, resize, contrast)
    root = resolve_cache_dir(cache_dir)
    final = root / key
    if final.exists():
        try:
            cache = ImageCache.open(final)
            if cache._files is not None and cache._files != files:
                raise ValueError("its recorded source files differ from the frame's "
                                 f"({_describe_changes(cache._files, files)})")
            cache.rows = _rows_for(cache.rows, frame)
            return cache
        except (ValueError, FileNotFoundError) as err:
            warnings.warn(f"Rebuilding an incomplete or damaged cache: {final} ({err})", stacklevel=2)
    else:
        _warn_if_dataset_changed(root, files, size=size, resize=resize, contrast=contrast)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{_TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_cache(tmp, frame.reset_index(drop=True), key=key, size=size, resize=resize,
                     contrast=contrast, strict=strict, progress=progress, files=files)
        try:
            os.replace(tmp, final)   # atomic; fails if a non-empty folder is in the way
        except OSError:
            try:                     # another process finished the same cache first: use it
                ImageCache.open(final)
                shutil.rmtree(tmp)
            except (ValueError, FileNotFoundError):   # the damaged cache warned about above: replace it
                if final.is_dir():
                    shutil.rmtree(final)
                else:
                    final.unlink()
                os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cache = ImageCache.open(final)
    cache.rows = _rows_for(cache.rows, frame)
    return cache


def _describe_changes(before, now) -> str:
    """What changed between two source lists (``[image, size, mtime_ns]``)."""
    old = {f[0]: tuple(f[1:]) for f in before}
    new = {f[0]: tuple(f[1:]) for f in now}
    modified = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    parts = [f"{len(names)} {what}" + (f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else "")
             for what, names in (("modified", modified), ("added", added), ("removed", removed))]
    return ", ".join(parts)


def _warn_if_dataset_changed(root: Path, files, *, size, resize, contrast):
    """Warn when an earlier cache of these settings was built from an older state of this
    dataset (the same images, give or take a few, some with other sizes or times)."""
    if not root.is_dir():
        return
    prefix = f"{size}-{resize}-{contrast or 'none'}-"
    images_now = {f[0] for f in files}
    best = None
    for folder in root.iterdir():
        if not folder.name.startswith(prefix) or not (folder / _META).is_file():
            continue
        try:
            meta = json.loads((folder / _META).read_text())
            before = [list(f) for f in meta["files"]]
            images_before = {f[0] for f in before}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
        overlap = len(images_now & images_before) / max(len(images_now | images_before), 1)
        if overlap >= _SAME_DATASET and (best is None or overlap > best[0]):
            best = (overlap, folder, before)
    if best is not None and best[2] != files:
        warnings.warn(f"The source files changed since cache {best[1].name} was built "
                      f"({_describe_changes(best[2], files)}); building a new cache "
                      f"(remove the old one with clear_caches).", stacklevel=3)


def _decode_for_cache(path, *, strict):
    """:func:`load_image`, and the :data:`MIN_IMAGE_SIDE` check that a radiograph passes."""
    grey = load_image(path, strict=strict)
    if grey is not None and min(grey.shape) < MIN_IMAGE_SIDE:
        shape = f"{grey.shape[1]}x{grey.shape[0]} px"
        if strict:
            raise ValueError(f"Expected an image at least {MIN_IMAGE_SIDE} px on each side (a radiograph); "
                             f"this one is {shape}. Received: path='{path}'")
        warnings.warn(f"Skipping a too small image file: {path} ({shape}, under {MIN_IMAGE_SIDE} px)",
                      stacklevel=3)
        return None
    return grey


def _write_cache(tmp: Path, frame, *, key, size, resize, contrast, strict, progress, files):
    from tqdm.auto import tqdm

    n = len(frame)
    if n == 0:
        raise ValueError("Expected a frame with at least one row. Received: frame with 0 rows")
    store = np.lib.format.open_memmap(tmp / "all.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 1))
    kept, skipped = [], []
    bar = tqdm(frame["path"], total=n, desc=f"caching {n} images at {size}px", unit="img", disable=not progress)
    for i, path in enumerate(bar):
        grey = _decode_for_cache(path, strict=strict)
        if grey is None:
            skipped.append(str(frame["image"].iloc[i]))
            continue
        store[len(kept), :, :, 0] = preprocess(grey, image_size=size, resize=resize, contrast=contrast)
        kept.append(i)
        if i == n // 2 and os.environ.get("COVIDXR_FAULT"):  # the interruption tests stop here
            from .atomic import fault_point

            fault_point("mid-cache")
    if not kept:
        raise ValueError(f"Expected at least one readable image; none of the {n} files could be decoded. "
                         f"Received: images={skipped[:5]}")
    if len(kept) < n:
        final = np.lib.format.open_memmap(tmp / _IMAGES, mode="w+", dtype=np.uint8,
                                          shape=(len(kept), size, size, 1))
        for start in range(0, len(kept), 1024):
            stop = min(start + 1024, len(kept))
            final[start:stop] = store[start:stop]
        final.flush()
        del final
        del store
        (tmp / "all.npy").unlink()
    else:
        store.flush()
        del store
        os.replace(tmp / "all.npy", tmp / _IMAGES)
    rows = frame.iloc[kept].reset_index(drop=True)
    rows.to_csv(tmp / _ROWS, index=False)
    dtypes = {c: ("str" if rows[c].dtype == object or pd.api.types.is_string_dtype(rows[c]) else str(rows[c].dtype))
              for c in rows.columns}
    checksums = {name: _sha256(tmp / name) for name in (_IMAGES, _ROWS)}
    meta = {"format": CACHE_FORMAT, "key": key, "complete": True, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "settings": {"image_size": size, "resize": resize, "contrast": contrast},
            "n_images": len(kept), "skipped": skipped, "dtypes": dtypes,
            "checksums": checksums, "files": files}
    (tmp / _META).write_text(json.dumps(meta, indent=1))


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_caches(cache_dir=None) -> pd.DataFrame:
    """The complete caches in ``cache_dir`` (see :func:`resolve_cache_dir`).

    Returns:
        DataFrame with columns key, images, image_size, resize, contrast, skipped, mb,
        created, path (one row per cache, sorted by key); empty if there are none.
    """
    root = resolve_cache_dir(cache_dir)
    rows = []
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or folder.name.startswith(_TMP_PREFIX) or not (folder / _META).is_file():
                continue
            try:
                cache = ImageCache.open(folder, verify=False)   # a quick listing: no checksums
            except ValueError:
                continue
            meta = json.loads((folder / _META).read_text())
            rows.append({"key": cache.key, "images": len(cache), **cache.settings,
                         "skipped": len(cache.skipped), "mb": round(_folder_bytes(folder) / 2 ** 20, 2),
                         "created": meta.get("created"), "path": str(folder)})
    columns = ["key", "images", "image_size", "resize", "contrast", "skipped", "mb", "created", "path"]
    return pd.DataFrame(rows, columns=columns)


def clear_caches(cache_dir=None, *, key=None) -> list[Path]:
    """Remove caches from ``cache_dir``: the one whose key is (or starts with) ``key``, or all.

    Without ``key``, unfinished temporary folders left by interrupted builds go too.
    Folders that are not caches are never touched.

    Returns:
        The removed folders.

    Raises:
        ValueError: ``key`` matches no cache, or more than one.
    """
    root = resolve_cache_dir(cache_dir)
    table = list_caches(root)
    if key is not None:
        match = table[table["key"] == key]
        if match.empty:
            match = table[table["key"].str.startswith(str(key))]
        if len(match) != 1:
            what = "no cache" if match.empty else f"{len(match)} caches"
            raise ValueError(f"Expected the key of one cache in '{root}' (have: {list(table['key'])}); "
                             f"it matches {what}. Received: key={key!r}")
        targets = [Path(p) for p in match["path"]]
    else:
        targets = [Path(p) for p in table["path"]]
        if root.is_dir():
            targets += [f for f in root.iterdir() if f.is_dir() and f.name.startswith(_TMP_PREFIX)]
    for folder in targets:
        shutil.rmtree(folder)
    return targets


# --------------------------------------------------------------------------- figures

def plot_preprocessing(paths, *, image_size=224, resize="pad", contrast=None, titles=None):
    """Raw images (top row) beside their preprocessed versions (bottom row).

    Args:
        paths: Image files (a few).
        image_size, resize, contrast: As :func:`preprocess`.
        titles: Optional column titles (e.g. labels).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    paths = list(paths)
    fig, axes = plt.subplots(2, len(paths), figsize=(2.4 * len(paths), 5), squeeze=False)
    for j, path in enumerate(paths):
        grey = load_image(path)
        axes[0, j].imshow(grey, cmap="gray", vmin=0, vmax=255)
        axes[0, j].set_title(f"{titles[j] if titles else Path(path).name}\n{grey.shape[1]}x{grey.shape[0]}", fontsize=8)
        axes[1, j].imshow(preprocess(grey, image_size=image_size, resize=resize, contrast=contrast),
                          cmap="gray", vmin=0, vmax=255)
        axes[1, j].set_title(f"{resize} {image_size}px, contrast={contrast}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_contrast(paths, *, image_size=224, resize="pad"):
    """One row per image, one column per contrast setting (:data:`CONTRASTS`), with histograms
    (the y axis is scaled to the bins above the first, which holds the padding).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    paths = list(paths)
    fig, axes = plt.subplots(len(paths), 2 * len(CONTRASTS), figsize=(3.0 * len(CONTRASTS) * 2, 2.4 * len(paths)),
                             squeeze=False)
    for i, path in enumerate(paths):
        grey = load_image(path)
        for j, contrast in enumerate(CONTRASTS):
            out = preprocess(grey, image_size=image_size, resize=resize, contrast=contrast)
            axes[i, 2 * j].imshow(out, cmap="gray", vmin=0, vmax=255)
            axes[i, 2 * j].axis("off")
            axes[i, 2 * j].set_title(f"contrast={contrast}", fontsize=8)
            counts, _, _ = axes[i, 2 * j + 1].hist(out.ravel(), bins=64, range=(0, 256), color="0.3")
            # the first bin holds the padding: scale the axis to the others
            axes[i, 2 * j + 1].set_ylim(0, 1.15 * max(counts[1:].max(), 1))
            axes[i, 2 * j + 1].set_yticks([])
    fig.tight_layout()
    return fig


def plot_augmentations(image, *, augmentation, n_variants=8, columns=4, seed=0):
    """A grid of random augmented variants of one cached image (the original first).

    Args:
        image: ``uint8`` array (S, S) or (S, S, 1), e.g. ``cache.select([key])[0]``.
        augmentation: A Keras layer or model taking float (b, S, S, 1) images in 0..255,
            e.g. ``covidxr.models.build_augmentation(seed=0)``; called with ``training=True``.
        n_variants: Number of augmented variants.
        columns: Images per row.
        seed: Seeds Keras' global generator (``keras.utils.set_random_seed``) for a
            reproducible grid.

    Returns:
        The matplotlib Figure.
    """
    import keras
    import matplotlib.pyplot as plt

    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., 0]
    keras.utils.set_random_seed(seed)
    batch = np.repeat(image[None, :, :, None].astype("float32"), n_variants, axis=0)
    variants = keras.ops.convert_to_numpy(augmentation(batch, training=True))[..., 0]
    tiles = [image] + list(variants)
    rows = int(np.ceil(len(tiles) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, tile) in enumerate(zip(axes.flat, tiles)):
        ax.imshow(np.clip(tile, 0, 255), cmap="gray", vmin=0, vmax=255)
        ax.set_title("original" if k == 0 else f"variant {k}", fontsize=8)
    fig.tight_layout()
    return fig
