"""Image decoding and preprocessing: every image becomes one ``uint8`` grey channel.
Must not write files or keep state: a file in, an array out.

* :func:`load_image` opens PNG/JPEG/BMP/TIFF files in any PIL mode (RGB, L, LA, RGBA, P,
  1, CMYK, I;16, I, F; EXIF orientation applied) and DICOM files (``pydicom``: modality LUT
  or rescale slope/intercept, the file's window or VOI LUT, MONOCHROME1 inverted), by one
  fixed rule (:data:`DECODING_RULE`): the same stored value gives the same grey in every file.
  DICOM transfer syntaxes: uncompressed and deflated, RLE (pydicom itself), JPEG baseline and
  JPEG 2000 (Pillow, through pydicom); JPEG lossless, JPEG-LS, 12-bit JPEG and HTJ2K need a
  pydicom pixel plugin (pylibjpeg): without one, an ImportError names the syntax and the pip command.
* :func:`preprocess` enhances contrast (optional: CLAHE or histogram equalisation from
  scikit-image) and makes the image square, keeping its aspect ratio (pad or centre-crop).
* :func:`check_settings` checks the ``image_size``, ``resize`` and ``contrast`` options.

The step to three float channels and each backbone's own ``preprocess_input`` happen inside
the model (:mod:`covidxr.models`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..data.notices import DataWarning

__all__ = [
    "CONTRASTS",
    "DECODER_VERSION",
    "DECODING_RULE",
    "DICOM_EXTENSIONS",
    "MIN_IMAGE_SIDE",
    "RESIZES",
    "check_settings",
    "load_image",
    "load_radiograph",
    "png_significant_bits",
    "preprocess",
]

#: Ways to make an image square: ``pad`` keeps all of it (black borders), ``crop`` keeps the
#: centre square.
RESIZES = ("pad", "crop")
#: Contrast enhancements: None (off), ``clahe`` (scikit-image ``equalize_adapthist``) and
#: ``equalize`` (global histogram equalisation, ``equalize_hist``).
CONTRASTS = (None, "clahe", "equalize")
DICOM_EXTENSIONS = (".dcm", ".dicom")
#: Version of the decoding rules (:func:`load_image`); part of every cache key and hash index
#: entry, so a change to decoding never reuses a stale cache.
DECODER_VERSION = 2
#: How :func:`load_image` turns stored values into 0..255 greys (recorded in a run's
#: ``config.json``). One fixed range per file format and header, never the image's own
#: minimum and maximum and never a guess of its bit depth, so the same stored value gives
#: the same grey in every file. Data that fill only part of the range (offset 16-bit data,
#: values 30,000-34,000, become the greys 117-132, about 16 levels) keep their low contrast:
#: a DICOM window gives such data contrast, the decoder does not.
DECODING_RULE = (
    "8-bit and colour images: as stored (colour: ITU-R 601-2 luma). 16-bit PNG: value * 255 / (2^b - 1), "
    "clipped, with b the significant bits of its sBIT chunk, else b = 16; other 16-bit images (TIFF I;16) "
    "and 32-bit integer images (PIL mode I): value * 255 / 65535, clipped; signed 16-bit (I;16S): the "
    "signed range; 32-bit float images (mode F): value * 255 over [0, 1], clipped (NaN black); values "
    "clipped are warned about. DICOM: modality LUT or rescale slope/intercept, then the file's window "
    "(centre/width, PS3.3 C.11.2.1.2.1), else its VOI LUT (the LUT's output range), else the range "
    "BitsStored allows ([0, 2^BitsStored - 1], or the signed range when PixelRepresentation is 1) carried "
    "through the rescale; MONOCHROME1 inverted"
)

#: Images whose shorter side is below this many pixels (a 1x1 placeholder, a thin strip)
#: are not radiographs: :func:`load_radiograph`, the one rule of every path that uses an image
#: (the cache skips them, or raises with ``strict=True``; ``predict`` and an external evaluation
#: report them; the hash index never merges them).
MIN_IMAGE_SIDE = 16


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


def _scale(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map the fixed range [low, high] linearly to 0..255 (``uint8``), clipping outside it."""
    array = np.asarray(array, dtype=np.float64)
    if high <= low:
        raise ValueError(f"Expected a grey range with high > low. Received: low={low}, high={high}")
    return np.clip(np.rint((array - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_significant_bits(path) -> int | None:
    """The significant bits a 16-bit greyscale PNG declares in its ``sBIT`` chunk, parsed by hand
    (Pillow has no handler for it).

    Only the chunks before the first ``IDAT`` are read (``sBIT`` must precede it).

    Args:
        path: Any file.

    Returns:
        The declared bits (1..16) of a PNG with bit depth 16 and colour type 0 (grey) or 4
        (grey + alpha) that has an ``sBIT`` chunk; None for any other file, or a declaration
        outside 1..16 (which the PNG specification does not allow; the full range is used).
    """
    with open(path, "rb") as handle:
        if handle.read(8) != _PNG_SIGNATURE:
            return None
        depth = colour = None
        while True:
            head = handle.read(8)
            if len(head) < 8:
                return None
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind in (b"IDAT", b"IEND"):
                return None
            if kind == b"IHDR":
                data = handle.read(length)
                depth, colour = (data[8], data[9]) if len(data) >= 10 else (None, None)
            elif kind == b"sBIT":
                data = handle.read(length)
                if depth != 16 or colour not in (0, 4) or not data:
                    return None
                return int(data[0]) if 1 <= data[0] <= 16 else None
            else:
                handle.seek(length, 1)
            handle.seek(4, 1)   # the chunk's CRC


#: The summary's phrase for an image file that is skipped (missing, not a file, unreadable, too small).
_SKIPPED = "image files cannot be read (skipped)"


def _warn_clipped(array, low, high, what, source):
    outside = int(np.count_nonzero(~((array >= low) & (array <= high))))
    if outside:
        warnings.warn(DataWarning(f"{outside} pixel values of {source or 'an image'} lie outside {what} [{low:g}, "
                                  f"{high:g}] and were clipped to black or white.", count=1,
                                  what="images with pixel values clipped"), stacklevel=4)


def _pil_to_grey(img: Image.Image, *, significant_bits=None, source=None) -> np.ndarray:
    """One PIL image (any mode) to a uint8 (H, W) grey array, by the fixed rule of :data:`DECODING_RULE`."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(img).astype(np.int64)
        if mode == "I;16S":
            return _scale(array, -32768, 32767)
        top = 2 ** significant_bits - 1 if significant_bits else 65535
        if significant_bits or mode == "I":
            _warn_clipped(array, 0, top, f"the declared {significant_bits}-bit range" if significant_bits
                          else "the 16-bit range", source)
        return _scale(array, 0, top)
    if mode == "F":
        array = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        _warn_clipped(array, 0.0, 1.0, "the float range", source)
        return _scale(array, 0.0, 1.0)
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


def _stored_range(ds) -> tuple[float, float]:
    """The range ``BitsStored`` allows: [0, 2^b - 1], or [-2^(b-1), 2^(b-1) - 1] when signed
    (``PixelRepresentation`` 1)."""
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1


def _modality_range(ds) -> tuple[float, float]:
    """The stored range carried through the modality LUT (its output range) or the rescale
    slope and intercept: where the file's values can lie, whatever this image holds."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    low, high = _stored_range(ds)
    slope, intercept = 1.0, 0.0
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:   # as pydicom's apply_modality_lut
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    ends = (slope * low + intercept, slope * high + intercept)
    return min(ends), max(ends)


def _dicom_pixels(ds):
    """The first frame's pixels, after the decompression-bomb check."""
    if "PixelData" not in ds:
        raise ValueError("the DICOM file holds no pixel data")
    # PIL's decompression-bomb limit, checked before pydicom allocates the pixel buffer
    pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("NumberOfFrames", 1) or 1)
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"the DICOM header claims {pixels} pixels, more than the decompression-bomb "
                         f"limit of {Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS)")
    try:
        array = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom's pixel plugins raise RuntimeError, ValueError ...
        raise _undecodable(ds, err) from err
    return array[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else array


def _install_hint(missing) -> str:
    """A pip command from pydicom's list of missing plugin dependencies (``"pylibjpeg - requires
    pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"``, ...); pylibjpeg's when it is one of them."""
    options = []
    for entry in missing:
        plugin, _, needs = str(entry).partition(" - requires ")
        packages = [p.strip() for p in needs.split(" and ") if p.strip() and p.strip() != "numpy"]
        if packages:
            options.append((plugin.strip() != "pylibjpeg", " ".join(f"'{p}'" for p in packages)))
    if not options:
        return "no pixel-data plugin pydicom knows decodes it"
    return f"pip install {sorted(options)[0][1]}"


def _undecodable(ds, err) -> Exception:
    """The error for pixel data pydicom cannot decode, naming the transfer syntax: ImportError
    when no plugin for it is installed (with the pip command), else ValueError."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax = f"'{uid.name}' ({uid})" if uid else "(none in the file meta)"
    detail = " ".join(str(err).split())[:300]
    try:
        from pydicom.pixels.decoders.base import get_decoder

        decoder = get_decoder(uid)
    except Exception:  # noqa: BLE001 - no decoder for this syntax (or pydicom 2.x)
        return ValueError(f"the DICOM pixel data of transfer syntax {syntax} cannot be decoded ({detail})")
    install = _install_hint(decoder.missing_dependencies)
    if not decoder.is_available:
        return ImportError(f"Expected a pixel-data plugin for the DICOM transfer syntax {syntax}; none is installed "
                           f"({install}). Received: transfer_syntax='{uid}', path='{getattr(ds, 'filename', None)}'")
    return ValueError(f"the DICOM pixel data of transfer syntax {syntax} cannot be decoded by the installed plugins "
                      f"({detail}); if the file is sound, another plugin may read it: {install}")


def _load_dicom(path: Path) -> np.ndarray:
    pydicom = _require("pydicom", "reading DICOM files")
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi

    ds = pydicom.dcmread(path)
    array = _dicom_pixels(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # colour DICOM (RGB, YBR_*, PALETTE COLOR): to RGB, then PIL's luma.
        # (pydicom 3's pixel_array already converts YBR_* to RGB.)
        try:
            from pydicom.pixels import apply_color_lut
        except ImportError:  # pydicom 2.x
            from pydicom.pixel_data_handlers.util import apply_color_lut

        if photometric == "PALETTE COLOR":
            array = apply_color_lut(array, ds)
            top = 2.0 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1
        else:
            top = _stored_range(ds)[1]
        if array.ndim != 3:
            raise ValueError(f"photometric interpretation {photometric} with pixel shape {array.shape}")
        return _pil_to_grey(Image.fromarray(array if array.dtype == np.uint8 else _scale(array, 0, top)))
    values = apply_modality_lut(array, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        # DICOM PS3.3 C.11.2.1.2.1, linear: x <= c - 0.5 - (w-1)/2 -> black, x > c - 0.5 + (w-1)/2 -> white
        width = max(width, 1.0)
        scaled = ((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5) * 255.0
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    elif "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        grey = _scale(apply_voi(values, ds), 0, 2 ** int(lut.LUTDescriptor[2]) - 1)
    else:
        grey = _scale(values, *_modality_range(ds))
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def load_image(path, *, strict=True) -> np.ndarray | None:
    """Open one image file as a ``uint8`` grey array.

    PIL formats in any mode (RGB, L, LA, RGBA, P, 1, CMYK JPEG, I;16 and other 16-bit
    modes scaled to 8 bits, EXIF-rotated JPEG turned upright) and DICOM files (by extension
    ``.dcm``/``.dicom`` or by the ``DICM`` magic; rescale slope/intercept or modality LUT,
    then the file's window, else its VOI LUT, else the range its ``BitsStored`` allows;
    MONOCHROME1 inverted). Grey levels follow :data:`DECODING_RULE`: a fixed range per
    format and header (a 16-bit PNG's ``sBIT`` chunk, :func:`png_significant_bits`), never
    the image's own minimum and maximum, so two files that store the same value show it as
    the same grey (the PNG specification asks writers that declare ``sBIT`` to scale their
    samples to 16 bits; covidxr reads the declared bits as the stored range, as medical
    writers use it, and warns when values above it are clipped).
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
        ImportError: a DICOM file needs a package that is not installed (pydicom, or a pixel
            plugin for its transfer syntax: the message names the syntax and the pip command),
            whatever ``strict``.
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():   # never opened: a folder, a device (/dev/zero) or a pipe could hang or flood
            kind = "a folder" if path.is_dir() else "a device, pipe or socket"
            if strict:
                raise ValueError(f"Expected a regular image file; this path is {kind}. Received: path='{path}'")
            warnings.warn(DataWarning(f"Skipping a path that is not a regular file ({kind}): {path}", count=1,
                                      what=_SKIPPED), stacklevel=2)
            return None
        if strict:
            raise FileNotFoundError(f"Expected an image file; none exists there. Received: path='{path}'")
        warnings.warn(DataWarning(f"Skipping a missing image file: {path}", count=1, what=_SKIPPED), stacklevel=2)
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
                    bits = png_significant_bits(path) if img.format == "PNG" else None
                    img = ImageOps.exif_transpose(img)
                    grey = _pil_to_grey(img, significant_bits=bits, source=path)
        if grey.ndim != 2 or grey.size == 0:
            raise ValueError(f"decoded to an array of shape {grey.shape}, not (H, W)")
    except Exception as err:  # noqa: BLE001 - any decoder failure (PIL, pydicom, its pixel handlers) is a bad file
        if isinstance(err, ImportError):  # a missing optional package is not a bad file
            raise
        message = f"Expected a readable image file; this one cannot be decoded ({type(err).__name__}: {err})."
        if strict:
            raise ValueError(f"{message} Received: path='{path}'") from err
        warnings.warn(DataWarning(f"Skipping an unreadable image file: {path} ({type(err).__name__}: {err})",
                                  count=1, what=_SKIPPED), stacklevel=2)
        return None
    return grey


# --------------------------------------------------------------------------- preprocessing

def check_settings(image_size, resize, contrast):
    """Check the preprocessing options; return ``image_size`` as an int.

    Raises:
        ValueError: ``image_size`` is not an integer >= 8, or ``resize``/``contrast`` is
            not one of :data:`RESIZES`/:data:`CONTRASTS`.
    """
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


def load_radiograph(path, *, strict=True) -> np.ndarray | None:
    """:func:`load_image`, and the :data:`MIN_IMAGE_SIDE` check that a radiograph passes.

    Args:
        path: The file.
        strict: If True, a bad file or a too small image raises; if False it gives a warning
            naming the file and None.

    Returns:
        A ``uint8`` array of shape (H, W), H and W at least :data:`MIN_IMAGE_SIDE`, or None
        (``strict=False`` only).

    Raises:
        ValueError: The image is smaller than :data:`MIN_IMAGE_SIDE` on a side (``strict=True``);
            or as :func:`load_image`.
    """
    grey = load_image(path, strict=strict)
    if grey is not None and min(grey.shape) < MIN_IMAGE_SIDE:
        shape = f"{grey.shape[1]}x{grey.shape[0]} px"
        if strict:
            raise ValueError(f"Expected an image at least {MIN_IMAGE_SIDE} px on each side (a radiograph); "
                             f"this one is {shape}. Received: path='{path}'")
        warnings.warn(DataWarning(f"Skipping a too small image file: {path} ({shape}, under {MIN_IMAGE_SIDE} px)",
                                  count=1, what=_SKIPPED), stacklevel=2)
        return None
    return grey


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
    size = check_settings(image_size, resize, contrast)
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
