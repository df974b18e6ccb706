"""Tests for covidxr.images: decoding every image mode and DICOM, preprocessing, the cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxr import data, figures, images
from covidxr.images import cache as image_cache


def _grey(h=40, w=30, seed=0):
    """A smooth grey image (JPEG keeps it close), distinct per seed."""
    y, x = np.mgrid[0:h, 0:w]
    img = 128 + 90 * np.sin(x / w * np.pi * (1 + seed)) * np.cos(y / h * np.pi)
    return np.clip(img, 0, 255).astype(np.uint8)


def _load_frame(root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.load_dataset(root)


# --------------------------------------------------------------------------- PIL modes

@pytest.mark.parametrize("mode, ext, tol", [
    ("L", "png", 0), ("RGB", "png", 0), ("RGBA", "png", 0), ("P", "png", 0), ("LA", "png", 0),
    ("L", "jpg", 6), ("RGB", "jpg", 6), ("I", "tif", 0),
])
def test_load_image_modes(tmp_path, mode, ext, tol):
    grey = _grey()
    path = tmp_path / f"img.{ext}"
    img = Image.fromarray(grey)
    # a 32-bit integer image (mode I) is read on the 16-bit range (DECODING_RULE): store grey * 257
    img = img.convert(mode) if mode != "I" else Image.fromarray(grey.astype(np.int32) * 257, mode="I")
    img.save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    out = images.load_image(path)
    assert out.dtype == np.uint8 and out.shape == grey.shape
    assert np.abs(out.astype(int) - grey).mean() <= tol
    if mode == "P":  # a palette of 256 greys: exact
        np.testing.assert_array_equal(out, grey)


def test_load_image_16bit_png_full_range(tmp_path):
    grey = _grey()
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as check:
        assert check.mode.startswith("I;16")
    np.testing.assert_array_equal(images.load_image(tmp_path / "a.png"), grey)


def _png_16(path, values, *, sbit=None):
    """A 16-bit grey PNG of ``values``, with an sBIT chunk of ``sbit`` bits inserted after IHDR."""
    import zlib

    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)
    if sbit is not None:
        raw = path.read_bytes()
        end = 8 + 8 + 13 + 4   # signature, IHDR header, data, CRC
        chunk = b"sBIT" + bytes([sbit])
        path.write_bytes(raw[:end] + (1).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
                         + raw[end:])
    return path


def test_load_image_16bit_png_12_bit_data_without_sbit_uses_the_full_range(tmp_path):
    values = np.linspace(0, 4095, 40 * 30).reshape(40, 30).astype(np.uint16)
    out = images.load_image(_png_16(tmp_path / "a.png", values))
    # no sBIT chunk: the full 16-bit range, never a guess of the bit depth from the image's maximum
    np.testing.assert_array_equal(out, np.rint(values * 255.0 / 65535).astype(np.uint8))
    assert out.max() == 16


def test_16bit_png_one_pixel_more_does_not_change_the_other_greys(tmp_path):
    values = np.linspace(0, 4095, 40 * 30).reshape(40, 30).astype(np.uint16)
    brighter = values.copy()
    brighter[0, 0] = 4096   # one pixel past 12 bits: a bit-depth guess would jump 4x
    a = images.load_image(_png_16(tmp_path / "a.png", values))
    b = images.load_image(_png_16(tmp_path / "b.png", brighter))
    np.testing.assert_array_equal(a.ravel()[1:], b.ravel()[1:])


def test_offset_16bit_data_keeps_its_low_contrast_and_the_same_value_the_same_grey(tmp_path):
    offset = np.linspace(30000, 34000, 40 * 30).reshape(40, 30).astype(np.uint16)
    wide = np.linspace(0, 65535, 40 * 30).reshape(40, 30).astype(np.uint16)
    wide[0, :3] = [30000, 32000, 34000]
    a = images.load_image(_png_16(tmp_path / "offset.png", offset))
    b = images.load_image(_png_16(tmp_path / "wide.png", wide))
    assert (a.min(), a.max()) == (117, 132) and len(np.unique(a)) == 16   # windowing gives contrast, not decoding
    assert list(b[0, :3]) == [a[0, 0], images.load_image(_png_16(tmp_path / "one.png", np.full((20, 20), 32000)))[0, 0],
                              a[-1, -1]]


def test_16bit_png_sbit_declares_the_range(tmp_path):
    values = np.linspace(0, 4095, 40 * 30).reshape(40, 30).astype(np.uint16)
    path = _png_16(tmp_path / "s.png", values, sbit=12)
    assert images.png_significant_bits(path) == 12
    out = images.load_image(path)
    assert out[-1, -1] == 255 and out[0, 0] == 0
    np.testing.assert_allclose(out, values * 255.0 / 4095, atol=0.51)
    with Image.open(path) as check:   # Pillow still reads the file with the inserted chunk
        assert check.mode.startswith("I;16")
    # values above the declared bits are clipped, with a warning naming the file
    values[0, 0] = 5000
    with pytest.warns(UserWarning, match=r"1 pixel values of .*over\.png lie outside the declared 12-bit range"):
        assert images.load_image(_png_16(tmp_path / "over.png", values, sbit=12))[0, 0] == 255


def test_png_significant_bits_only_for_16bit_grey_png(tmp_path):
    Image.fromarray(_grey()).save(tmp_path / "g8.png")
    Image.fromarray(_grey()).save(tmp_path / "g8.tif")
    assert images.png_significant_bits(tmp_path / "g8.png") is None
    assert images.png_significant_bits(tmp_path / "g8.tif") is None
    assert images.png_significant_bits(_png_16(tmp_path / "none.png", np.zeros((20, 20)))) is None
    bad = _png_16(tmp_path / "bad.png", np.full((20, 20), 1000), sbit=0)   # not allowed: the full range
    assert images.png_significant_bits(bad) is None
    assert images.load_image(bad)[0, 0] == round(1000 * 255 / 65535)


def test_16bit_tiff_and_32bit_modes_use_fixed_ranges(tmp_path):
    values = np.rint(np.linspace(0, 4095, 40 * 30)).reshape(40, 30)
    Image.fromarray(values.astype(np.uint16)).save(tmp_path / "t16.tif")
    np.testing.assert_array_equal(images.load_image(tmp_path / "t16.tif"), np.rint(values * 255 / 65535))
    Image.fromarray((values / 4095).astype(np.float32), mode="F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(images.load_image(tmp_path / "f.tif"), values * 255 / 4095, atol=0.51)
    Image.fromarray(values.astype(np.float32), mode="F").save(tmp_path / "f_raw.tif")   # not in [0, 1]
    with pytest.warns(UserWarning, match=r"lie outside the float range \[0, 1\]"):
        assert images.load_image(tmp_path / "f_raw.tif").min() == 0
    Image.fromarray(np.full((20, 20), 70000, np.int32), mode="I").save(tmp_path / "i32.tif")
    with pytest.warns(UserWarning, match=r"400 pixel values .* outside the 16-bit range \[0, 65535\]"):
        assert images.load_image(tmp_path / "i32.tif").min() == 255


def test_cache_key_changes_with_the_decoder_version(tmp_path, monkeypatch):
    from covidxr.images import decode

    Image.fromarray(_grey()).save(tmp_path / "a.png")
    small = pd.DataFrame({"image": ["a.png"], "path": [str(tmp_path / "a.png")], "label": ["covid"]})
    key = images.cache_key(small, image_size=32)
    monkeypatch.setattr(decode, "DECODER_VERSION", decode.DECODER_VERSION + 1)
    assert images.cache_key(small, image_size=32) != key
    cache = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    assert json.loads((cache.path / "cache.json").read_text())["decoder_version"] == decode.DECODER_VERSION


def test_load_image_cmyk_jpeg(tmp_path):
    grey = _grey()
    Image.fromarray(grey).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as check:
        assert check.mode == "CMYK"
    out = images.load_image(tmp_path / "c.jpg")
    assert out.shape == grey.shape
    assert np.abs(out.astype(int) - grey).mean() < 8  # not inverted


def test_load_image_exif_rotation(tmp_path):
    grey = np.zeros((20, 40), np.uint8)   # wide as stored
    grey[:5, :5] = 255                    # bright top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6                      # "rotate 90 CW to display"
    Image.fromarray(grey).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = images.load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20)          # upright: tall
    assert out[:5, -5:].mean() > 200      # the corner moved to the top-right
    assert out[:5, :5].mean() < 50


# --------------------------------------------------------------------------- DICOM

def _write_dicom(path, pixels, *, photometric="MONOCHROME2", slope=None, intercept=None, window=None,
                 bits_stored=12, signed=False):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP = np.linspace(0, 4000, 20 * 16).reshape(20, 16).astype(np.uint16)


def test_dicom_monochrome2_bits_stored_range(tmp_path):
    out = images.load_image(_write_dicom(tmp_path / "a.dcm", RAMP))
    assert out.dtype == np.uint8 and out.shape == RAMP.shape
    # no window, no VOI LUT: the 12-bit range BitsStored allows, not the image's maximum (4000)
    np.testing.assert_allclose(out, RAMP * 255.0 / 4095, atol=0.51)


def test_dicom_without_window_uses_bits_stored_not_min_max(tmp_path):
    dark = (RAMP // 4).astype(np.uint16)          # 0..1000 of 12 bits
    a = images.load_image(_write_dicom(tmp_path / "a.dcm", RAMP))
    b = images.load_image(_write_dicom(tmp_path / "b.dcm", dark))
    same = np.isin(RAMP, dark)
    assert same.sum() > 10
    for value in np.unique(RAMP[same])[:5]:   # the same stored value, the same grey in both files
        assert a[RAMP == value][0] == b[dark == value][0]
    assert b.max() == round(1000 * 255 / 4095)
    wide = images.load_image(_write_dicom(tmp_path / "w.dcm", RAMP, bits_stored=16))
    np.testing.assert_allclose(wide, RAMP * 255.0 / 65535, atol=0.51)


def test_dicom_signed_pixels_and_rescale_carry_the_stored_range(tmp_path):
    raw = np.array([[-2048, -1, 0, 2047]], np.int16)   # 12 bits signed: [-2048, 2047]
    out = images.load_image(_write_dicom(tmp_path / "s.dcm", raw, signed=True))
    np.testing.assert_allclose(out, [[0, 127.5 - 0.5 * 255 / 4095, 127.5 + 0.5 * 255 / 4095, 255]], atol=0.51)
    # rescale 2 x - 1000: [-2048, 2047] -> [-5096, 3094]; the ends still map to black and white
    rescaled = images.load_image(_write_dicom(tmp_path / "r.dcm", raw, signed=True, slope=2, intercept=-1000))
    np.testing.assert_allclose(rescaled, out, atol=1)
    with pytest.raises(ValueError, match=r"grey range with high > low. Received: low=-1000"):
        images.load_image(_write_dicom(tmp_path / "z.dcm", raw, signed=True, slope=0, intercept=-1000))


def test_dicom_monochrome1_inverted(tmp_path):
    mono2 = images.load_image(_write_dicom(tmp_path / "a.dcm", RAMP))
    mono1 = images.load_image(_write_dicom(tmp_path / "b.dcm", RAMP, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert mono1[0, 0] == 255 and mono1[-1, -1] == 255 - round(4000 * 255 / 4095)   # low values are white


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_dicom_rescale_and_window(tmp_path, photometric):
    # stored 0..1000 -> HU = 2 * stored - 1000; window [-200, 200] (center 0, width 400)
    raw = np.array([[0, 400, 500, 600, 1000, 450]], np.uint16)
    out = images.load_image(_write_dicom(tmp_path / "w.dcm", raw, photometric=photometric,
                                         slope=2, intercept=-1000, window=(0, 400)))
    expected = np.array([[0, 0, 128, 255, 255, 64]])
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    np.testing.assert_allclose(out, expected, atol=1.5)
    # without the rescale, stored 500 would lie above the window and be white
    plain = images.load_image(_write_dicom(tmp_path / "p.dcm", raw, window=(0, 400)))
    assert plain[0, 2] == 255


def test_dicom_multivalued_window_and_magic_without_extension(tmp_path):
    path = _write_dicom(tmp_path / "noext", RAMP, window=([2000, 1000], [4000, 500]))
    out = images.load_image(path)
    assert out.shape == RAMP.shape and out[0, 0] == 0 and out[-1, -1] == 255
    np.testing.assert_allclose(out[10, 8], 255 * (RAMP[10, 8] - 1999.5) / 3999 + 127.5, atol=1.5)


# --------------------------------------------------------------------------- bad files

def _bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_grey()).save(good)
    Image.fromarray(_grey(80, 80)).save(tmp_path / "full.jpg", quality=95)
    raw = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image at all\n" * 20)
    png = bytearray(good.read_bytes())
    png[60:120] = bytes(60)
    (tmp_path / "corrupt.png").write_bytes(bytes(png))
    return ["truncated.jpg", "empty.png", "text.jpg", "corrupt.png"]


@pytest.mark.parametrize("name, message", [
    ("truncated.jpg", r"cannot be decoded.*truncated.*Received: path='.*truncated\.jpg'"),
    ("empty.png", r"cannot be decoded.*empty.*Received: path='.*empty\.png'"),
    ("text.jpg", r"cannot be decoded.*UnidentifiedImageError.*Received: path='.*text\.jpg'"),
    ("corrupt.png", r"cannot be decoded.*Received: path='.*corrupt\.png'"),
])
def test_bad_file_strict_raises(tmp_path, name, message):
    _bad_files(tmp_path)
    with pytest.raises(ValueError, match=message):
        images.load_image(tmp_path / name)
    with pytest.warns(UserWarning, match=rf"Skipping an unreadable image file: .*{name}"):
        assert images.load_image(tmp_path / name, strict=False) is None


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Expected an image file.*Received: path='.*nope\.png'"):
        images.load_image(tmp_path / "nope.png")
    with pytest.warns(UserWarning, match=r"Skipping a missing image file: .*nope\.png"):
        assert images.load_image(tmp_path / "nope.png", strict=False) is None


@pytest.mark.parametrize("limit, error", [(3000, "DecompressionBombWarning"), (1000, "DecompressionBombError")])
def test_decompression_bomb_refused(tmp_path, monkeypatch, limit, error):
    Image.fromarray(_grey(72, 60)).save(tmp_path / "big.png")    # 4320 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ValueError, match=rf"cannot be decoded \({error}.*Received: path='.*big\.png'"):
        images.load_image(tmp_path / "big.png")
    with pytest.warns(UserWarning, match=r"Skipping an unreadable image file: .*big\.png"):
        assert images.load_image(tmp_path / "big.png", strict=False) is None


# --------------------------------------------------------------------------- preprocess

def test_preprocess_pad_keeps_aspect_ratio():
    grey = np.full((60, 30), 200, np.uint8)     # tall
    out = images.preprocess(grey, image_size=32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert (out[:, :8] == 0).all() and (out[:, -8:] == 0).all()   # black side bars
    assert (out[:, 9:23] == 200).all()


def test_preprocess_crop_keeps_centre():
    grey = np.zeros((60, 30), np.uint8)
    grey[15:45] = 200                             # the centre square is bright
    out = images.preprocess(grey[..., None], image_size=16, resize="crop")
    assert out.shape == (16, 16)
    assert (out[1:-1] == 200).all()


@pytest.mark.parametrize("contrast", ["clahe", "equalize"])
def test_preprocess_contrast_spreads_histogram(contrast):
    pytest.importorskip("skimage")
    rng = np.random.default_rng(0)
    grey = (100 + 20 * rng.random((64, 64))).astype(np.uint8)    # low contrast: 100..120
    plain = images.preprocess(grey, image_size=64)
    enhanced = images.preprocess(grey, image_size=64, contrast=contrast)
    assert enhanced.dtype == np.uint8
    assert np.ptp(enhanced) > 3 * np.ptp(plain)


def test_preprocess_contrast_ignores_padding():
    pytest.importorskip("skimage")
    grey = (100 + 20 * np.random.default_rng(0).random((64, 32))).astype(np.uint8)
    out = images.preprocess(grey, image_size=32, contrast="equalize")
    assert (out[:, :8] == 0).all() and out[:, 8:24].max() == 255


def test_preprocess_errors():
    grey = _grey()
    with pytest.raises(ValueError, match=r"Unknown resize.*'pad', 'crop'.*Received: resize='stretch'"):
        images.preprocess(grey, image_size=32, resize="stretch")
    with pytest.raises(ValueError, match=r"Unknown contrast.*'clahe'.*Received: contrast='gamma'"):
        images.preprocess(grey, image_size=32, contrast="gamma")
    with pytest.raises(ValueError, match=r"image_size to be an integer >= 8. Received: image_size=4"):
        images.preprocess(grey, image_size=4)
    with pytest.raises(ValueError, match=r"uint8 grey image of shape \(H, W\). Received: image with shape=\(40, 30, 3\)"):
        images.preprocess(np.zeros((40, 30, 3), np.uint8), image_size=32)
    with pytest.raises(ValueError, match=r"Received: image with shape=\(40, 30\), dtype=float64"):
        images.preprocess(np.zeros((40, 30)), image_size=32)


# --------------------------------------------------------------------------- cache

def test_resolve_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("COVIDXR_CACHE_DIR", raising=False)
    assert images.resolve_cache_dir() == images.DEFAULT_CACHE_DIR
    monkeypatch.setenv("COVIDXR_CACHE_DIR", str(tmp_path / "env"))
    assert images.resolve_cache_dir() == tmp_path / "env"
    assert images.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"


@pytest.fixture(scope="module")
def frame(collection):
    return _load_frame(collection)


def test_build_cache_every_fixture_mode(frame, tmp_path):
    modes = set()
    for path in frame["path"]:
        with Image.open(path) as img:
            modes.add(img.mode)
    assert {"RGB", "L", "RGBA", "P"} <= modes and any(m.startswith("I;16") for m in modes)
    cache = images.build_cache(frame, image_size=32, cache_dir=tmp_path, progress=False)
    assert cache.images.shape == (len(frame), 32, 32, 1) and cache.images.dtype == np.uint8
    assert isinstance(cache.images, np.memmap)
    assert list(cache.rows["image"]) == list(frame["image"])
    assert cache.settings == {"image_size": 32, "resize": "pad", "contrast": None}
    assert cache.path == tmp_path / cache.key and cache.key.startswith("32-pad-none-")
    # each cached image equals decoding + preprocessing that file now
    for i in range(len(frame)):
        expected = images.preprocess(images.load_image(frame["path"].iloc[i]), image_size=32)
        np.testing.assert_array_equal(cache.images[i, :, :, 0], expected)
    batch = cache.select(list(frame["image"].iloc[[5, 0]]))
    np.testing.assert_array_equal(batch, np.asarray(cache.images)[[5, 0]])
    with pytest.raises(ValueError, match=r"1 are not in it. Received: images=\['nope.png'\]"):
        cache.select(["nope.png"])
    labels = cache.labels(data.get_task("covid-vs-rest").classes)
    assert labels.tolist() == [int(lab == "covid") for lab in frame["label"]]
    with pytest.raises(ValueError, match=r"Expected labels among \('a', 'b'\). Received: labels=\["):
        cache.labels(("a", "b"))


def test_cache_reused_without_decoding(frame, tmp_path, monkeypatch):
    first = images.build_cache(frame, image_size=32, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(image_cache, "load_radiograph", lambda *a, **k: pytest.fail("decoded again"))
    again = images.build_cache(frame.iloc[::-1], image_size=32, cache_dir=tmp_path, progress=False)
    assert again.path == first.path
    # rows follow the caller's frame (another task's labels), in the cache's order
    relabelled = frame.assign(label="x")
    assert set(images.build_cache(relabelled, image_size=32, cache_dir=tmp_path, progress=False).rows["label"]) == {"x"}


def test_changed_settings_or_files_build_new_cache(frame, tmp_path, collection):
    base = images.build_cache(frame, image_size=32, cache_dir=tmp_path, progress=False)
    keys = {base.key}
    for kwargs in ({"image_size": 40}, {"image_size": 32, "resize": "crop"},
                   {"image_size": 32, "contrast": "equalize"}):
        cache = images.build_cache(frame, cache_dir=tmp_path, progress=False, **kwargs)
        assert cache.key not in keys
        keys.add(cache.key)
    subset = images.build_cache(frame.iloc[:10], image_size=32, cache_dir=tmp_path, progress=False)
    assert subset.key not in keys and len(subset) == 10
    assert len(images.list_caches(tmp_path)) == 5


def test_changed_file_changes_key(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(_grey()).save(src / "a.png")
    small = pd.DataFrame({"image": ["a.png"], "path": [str(src / "a.png")], "label": ["covid"]})
    key = images.cache_key(small, image_size=32)
    assert images.cache_key(small, image_size=32) == key
    Image.fromarray(_grey(50, 30, seed=1)).save(src / "a.png")
    os.utime(src / "a.png", ns=(1, 1))
    assert images.cache_key(small, image_size=32) != key


def test_half_written_cache_is_never_used(frame, tmp_path):
    key = images.cache_key(frame, image_size=32)
    # a leftover temporary folder and a final folder without its metadata
    (tmp_path / f".tmp-{key}-dead").mkdir()
    (tmp_path / f".tmp-{key}-dead" / "images.npy").write_bytes(b"garbage")
    (tmp_path / key).mkdir()
    np.save(tmp_path / key / "images.npy", np.zeros((3, 32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match=r"Expected a complete image cache.*Received: path='.*32-pad-none-"):
        images.ImageCache.open(tmp_path / key)
    assert images.list_caches(tmp_path).empty
    with pytest.warns(UserWarning, match=r"Rebuilding an incomplete or damaged cache"):
        cache = images.build_cache(frame, image_size=32, cache_dir=tmp_path, progress=False)
    assert cache.path == tmp_path / key and len(cache) == len(frame)
    assert images.ImageCache.open(tmp_path / key).images.shape[0] == len(frame)


def test_interrupted_build_leaves_nothing(frame, tmp_path, monkeypatch):
    real = images.preprocess
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(image_cache, "preprocess", flaky)
    with pytest.raises(KeyboardInterrupt):
        images.build_cache(frame, image_size=32, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(image_cache, "preprocess", real)
    assert len(images.build_cache(frame, image_size=32, cache_dir=tmp_path, progress=False)) == len(frame)


def test_open_without_source_files(collection, tmp_path):
    src = tmp_path / "copy"
    shutil.copytree(collection, src)
    frame = _load_frame(src)
    built = images.build_cache(frame, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    shutil.rmtree(src)
    cache = images.ImageCache.open(built.path)
    assert cache.key == built.key and cache.settings == built.settings
    pd.testing.assert_frame_equal(cache.rows.drop(columns="age"), frame.reset_index(drop=True).drop(columns="age"),
                                  check_dtype=False)
    assert cache.rows["patient"].tolist() == frame["patient"].tolist()   # ids stay strings
    np.testing.assert_array_equal(np.asarray(cache.images), np.asarray(built.images))
    with pytest.raises(FileNotFoundError, match=r"Expected a cache folder. Received: path='.*nowhere'"):
        images.ImageCache.open(tmp_path / "nowhere")


def test_bad_files_skipped_with_warning(tmp_path):
    bad = _bad_files(tmp_path)
    names = ["good.png", *bad, "missing.png"]
    frame = pd.DataFrame({"image": names, "path": [str(tmp_path / n) for n in names],
                          "label": ["covid"] * len(names), "patient": [str(i) for i in range(len(names))]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = images.build_cache(frame, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    messages = " ".join(str(w.message) for w in caught)
    for name in [*bad, "missing.png"]:
        assert name in messages
    assert cache.rows["image"].tolist() == ["good.png"] and cache.images.shape == (1, 32, 32, 1)
    assert sorted(cache.skipped) == sorted([*bad, "missing.png"])
    assert images.list_caches(tmp_path / "cache")["skipped"].tolist() == [5]


def test_strict_build_raises_and_writes_nothing(tmp_path):
    bad = _bad_files(tmp_path)
    names = ["good.png", bad[0]]
    frame = pd.DataFrame({"image": names, "path": [str(tmp_path / n) for n in names]})
    with pytest.raises(ValueError, match=r"cannot be decoded.*Received: path='.*truncated\.jpg'"):
        images.build_cache(frame, image_size=32, cache_dir=tmp_path / "cache", strict=True, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
    only_bad = frame.iloc[1:]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"none of the 1 files could be decoded"):
        images.build_cache(only_bad, image_size=32, cache_dir=tmp_path / "cache", progress=False)


def test_build_cache_errors(frame, tmp_path):
    with pytest.raises(ValueError, match=r"'image' and 'path' columns.*Received: frame columns=\['a'\]"):
        images.build_cache(pd.DataFrame({"a": [1]}), image_size=32, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"each image once.*Received: duplicate image="):
        images.build_cache(pd.concat([frame, frame.iloc[:1]]), image_size=32, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"at least one row. Received: frame with 0 rows"):
        images.build_cache(frame.iloc[:0], image_size=32, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"Unknown resize"):
        images.build_cache(frame, image_size=32, resize="squash", cache_dir=tmp_path)


def test_list_and_clear_caches(frame, tmp_path):
    a = images.build_cache(frame.iloc[:6], image_size=32, cache_dir=tmp_path, progress=False)
    b = images.build_cache(frame.iloc[:6], image_size=48, cache_dir=tmp_path, progress=False)
    (tmp_path / "not-a-cache").mkdir()
    (tmp_path / ".tmp-leftover").mkdir()
    table = images.list_caches(tmp_path)
    assert sorted(table["key"]) == sorted([a.key, b.key])
    assert (table["mb"] > 0).all() and set(table["image_size"]) == {32, 48}
    with pytest.raises(ValueError, match=r"matches no cache. Received: key='zzz'"):
        images.clear_caches(tmp_path, key="zzz")
    with pytest.raises(ValueError, match=r"matches 2 caches. Received: key=''"):
        images.clear_caches(tmp_path, key="")
    assert images.clear_caches(tmp_path, key=a.key[:6]) == [a.path]
    assert images.list_caches(tmp_path)["key"].tolist() == [b.key]
    images.clear_caches(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-cache"]
    assert images.list_caches(tmp_path / "absent").empty


def test_cli_cache_list_and_clear(frame, tmp_path, capsys):
    from covidxr import cli

    cache = images.build_cache(frame.iloc[:4], image_size=32, cache_dir=tmp_path, progress=False)
    assert cli.main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert cache.key in out and "MB" in out
    assert cli.main(["cache", "clear", "--cache-dir", str(tmp_path), "--key", "nope"]) == 2
    assert "matches no cache" in capsys.readouterr().err
    assert cli.main(["cache", "clear", "--cache-dir", str(tmp_path), "--key", cache.key]) == 0
    assert f"removed {cache.path}" in capsys.readouterr().out
    assert cli.main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    assert "no caches" in capsys.readouterr().out


def test_light_imports():
    import subprocess
    import sys

    code = ("import sys, covidxr.images, covidxr.sampling; "
            "print(sorted(m for m in ('pydicom', 'skimage', 'tqdm', 'tensorflow_datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")})
    assert out.stdout.strip() == "[]"


def test_real_data_smoke(real_data, tmp_path):
    frame = _load_frame(real_data).iloc[:8]
    cache = images.build_cache(frame, image_size=64, contrast="clahe", cache_dir=tmp_path, progress=False)
    assert cache.images.shape == (8, 64, 64, 1)
    assert all(np.asarray(cache.images[i]).std() > 10 for i in range(8))


def test_missing_optional_package_is_an_import_error(tmp_path, monkeypatch):
    import sys

    path = _write_dicom(tmp_path / "a.dcm", RAMP)
    for name in ("pydicom", "skimage.exposure"):
        monkeypatch.setitem(sys.modules, name, None)      # "import name" raises ImportError
    with pytest.raises(ImportError, match=r"reading DICOM files needs the optional package 'pydicom'"):
        images.load_image(path, strict=False)
    with pytest.raises(ImportError, match=r"contrast='clahe' needs the optional package 'skimage.exposure'"):
        images.preprocess(_grey(), image_size=32, contrast="clahe")


def test_figures(collection):
    import matplotlib.pyplot as plt
    import keras

    frame = _load_frame(collection).iloc[:3]
    fig = figures.plot_preprocessing(frame["path"], image_size=32, contrast="equalize")
    assert len(fig.axes) == 6
    fig2 = figures.plot_contrast(frame["path"][:2], image_size=32)
    assert len(fig2.axes) == 12
    fig3 = figures.plot_augmentations(np.full((32, 32), 100, np.uint8), augmentation=keras.layers.Identity(),
                                      n_variants=3, columns=2)
    assert len([ax for ax in fig3.axes if ax.images]) == 4
    plt.close("all")


# --------------------------------------------------------------------------- cache integrity

def _small_frame(tmp_path, n=4):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        Image.fromarray(_grey(seed=i)).save(src / f"{i}.png")
    return pd.DataFrame({"image": [f"{i}.png" for i in range(n)], "path": [str(src / f"{i}.png") for i in range(n)],
                         "label": ["covid", "other"] * (n // 2), "patient": [str(i) for i in range(n)]})


def _flip_bytes(path):
    raw = bytearray(path.read_bytes())
    raw[-100:-90] = bytes(b ^ 0xFF for b in raw[-100:-90])
    path.write_bytes(bytes(raw))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-500])


def _bad_json(path):
    path.write_text(path.read_text()[:40])


def _edit_rows(path):
    path.write_text(path.read_text().replace("covid", "other", 1))


def test_cache_records_checksums_and_sources(tmp_path):
    small = _small_frame(tmp_path)
    cache = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    meta = json.loads((cache.path / "cache.json").read_text())
    for name in ("images.npy", "rows.csv"):
        assert meta["checksums"][name] == hashlib.sha256((cache.path / name).read_bytes()).hexdigest()
    stat = os.stat(small["path"][0])
    assert meta["files"][0] == ["0.png", stat.st_size, stat.st_mtime_ns]
    assert sorted(p.name for p in cache.path.iterdir()) == ["cache.json", "images.npy", "rows.csv"]


@pytest.mark.parametrize("damage, name, message", [
    (_flip_bytes, "images.npy", r"images.npy does not match the sha256 checksum"),
    (_truncate, "images.npy", r"images.npy does not match the sha256 checksum"),
    (_edit_rows, "rows.csv", r"rows.csv does not match the sha256 checksum"),
    (_bad_json, "cache.json", r"JSONDecodeError"),
])
def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch, damage, name, message):
    small = _small_frame(tmp_path)
    built = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    good = np.array(built.images)
    del built
    damage(tmp_path / "cache" / images.cache_key(small, image_size=32) / name)
    decoded = []
    real = images.load_radiograph
    monkeypatch.setattr(image_cache, "load_radiograph", lambda path, **kw: decoded.append(path) or real(path, **kw))
    with pytest.warns(UserWarning, match=rf"Rebuilding an incomplete or damaged cache: .*32-pad-none-.*{message}"):
        cache = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    assert len(decoded) == len(small)                      # really rebuilt, not reused
    np.testing.assert_array_equal(np.asarray(cache.images), good)
    assert cache.rows["label"].tolist() == small["label"].tolist()
    images.ImageCache.open(cache.path)                     # sound again
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.key]   # no temporary leftovers


def test_verify_false_skips_only_the_checksums(tmp_path):
    small = _small_frame(tmp_path)
    cache = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    _flip_bytes(cache.path / "images.npy")
    with pytest.raises(ValueError, match=r"images.npy does not match the sha256 checksum"):
        images.ImageCache.open(cache.path)
    assert len(images.ImageCache.open(cache.path, verify=False)) == 4   # the structure is still sound
    assert images.list_caches(tmp_path / "cache")["key"].tolist() == [cache.key]   # listed, so clear_caches finds it
    _truncate(cache.path / "images.npy")
    with pytest.raises(ValueError, match=r"Expected a complete image cache.*mmap length is greater"):
        images.ImageCache.open(cache.path, verify=False)


def test_cache_without_checksums_is_not_trusted(tmp_path):
    small = _small_frame(tmp_path)
    cache = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    meta = json.loads((cache.path / "cache.json").read_text())
    del meta["checksums"]
    (cache.path / "cache.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"records no checksums.*Received: path="):
        images.ImageCache.open(cache.path)
    with pytest.warns(UserWarning, match=r"Rebuilding an incomplete or damaged cache.*no checksums"):
        images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    assert "checksums" in json.loads((cache.path / "cache.json").read_text())


def test_modified_source_file_triggers_rebuild(tmp_path):
    small = _small_frame(tmp_path)
    old = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    Image.fromarray(255 - _grey(seed=1)).save(small["path"][1])        # new content
    os.utime(small["path"][1], ns=(1, 1))                               # and surely another mtime
    with pytest.warns(UserWarning, match=r"source files changed since cache 32-pad-none-\w+ was built "
                                         r"\(1 modified \(1.png\), 0 added, 0 removed\)"):
        new = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    assert new.key != old.key
    np.testing.assert_array_equal(new.images[1, :, :, 0],
                                  images.preprocess(images.load_image(small["path"][1]), image_size=32))
    assert not np.array_equal(np.asarray(new.images[1]), np.asarray(old.images[1]))
    # an added and a removed file: named too
    Image.fromarray(_grey(seed=9)).save(tmp_path / "src" / "9.png")
    changed = pd.concat([small.iloc[1:], pd.DataFrame({"image": ["9.png"], "path": [str(tmp_path / "src" / "9.png")],
                                                       "label": ["covid"], "patient": ["9"]})])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images.build_cache(changed, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    # 3 of 5 images shared: below the "same dataset" overlap, so a new cache without a claim
    assert not [w for w in caught if "changed since" in str(w.message)]


def test_added_and_removed_files_are_reported(tmp_path):
    small = _small_frame(tmp_path, n=20)
    images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    Image.fromarray(_grey(seed=30)).save(tmp_path / "src" / "new.png")
    new = pd.DataFrame({"image": ["new.png"], "path": [str(tmp_path / "src" / "new.png")], "label": ["covid"],
                        "patient": ["30"]})
    changed = pd.concat([small.iloc[1:], new])
    with pytest.warns(UserWarning, match=r"0 modified, 1 added \(new.png\), 1 removed \(0.png\)"):
        images.build_cache(changed, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    # a deleted source file (still listed by the frame) counts as modified, and is skipped
    os.remove(small["path"][3])
    with pytest.warns(UserWarning) as record:
        cache = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    messages = [str(w.message) for w in record]
    assert any("1 modified (3.png)" in m for m in messages) and any("missing image file" in m for m in messages)
    assert "3.png" not in set(cache.rows["image"])


def test_recorded_sources_must_match_on_reuse(tmp_path):
    small = _small_frame(tmp_path)
    cache = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    # a cache whose record disagrees with its key (a key collision, or a hand-edited folder)
    meta = json.loads((cache.path / "cache.json").read_text())
    meta["files"][2][2] += 1
    (cache.path / "cache.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"Rebuilding .*recorded source files differ.*1 modified \(2.png\)"):
        images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.parametrize("damage, message", [
    (lambda p: _flip_bytes(p / "images.npy"), r"images.npy does not match the sha256 checksum"),
    (lambda p: _truncate(p / "images.npy"), r"images.npy does not match the sha256 checksum"),
    (lambda p: (p / "rows.csv").write_text("image\n\"unclosed\n"), r"rows.csv does not match the sha256"),
    (lambda p: _bad_json(p / "cache.json"), r"JSONDecodeError"),
    (lambda p: (p / "cache.json").write_text("[1, 2]"), r"not marked complete"),
    (lambda p: (p / "images.npy").unlink(), r"No such file or directory.*images.npy"),
])
def test_damaged_carried_cache_raises(tmp_path, damage, message):
    small = _small_frame(tmp_path)
    built = images.build_cache(small, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    carried = tmp_path / "elsewhere" / built.key
    shutil.copytree(built.path, carried)
    shutil.rmtree(tmp_path / "src")                        # the source files are gone
    assert len(images.ImageCache.open(carried)) == 4       # sound as carried
    damage(carried)
    with pytest.raises(ValueError, match=rf"Expected a complete image cache.*{message}.*Received: path='.*elsewhere"):
        images.ImageCache.open(carried)


def test_too_small_images_are_skipped(tmp_path):
    small = _small_frame(tmp_path, n=2)
    Image.new("L", (1, 1), 200).save(tmp_path / "src" / "dot.png")
    Image.new("L", (400, 3), 200).save(tmp_path / "src" / "strip.png")
    names = ["dot.png", "strip.png"]
    frame = pd.concat([small, pd.DataFrame({"image": names, "path": [str(tmp_path / "src" / n) for n in names],
                                            "label": ["covid"] * 2, "patient": ["7", "8"]})])
    assert images.load_image(tmp_path / "src" / "dot.png").shape == (1, 1)   # decodes: it is a valid file
    with pytest.warns(UserWarning) as record:
        cache = images.build_cache(frame, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    assert sorted(str(w.message) for w in record) == [
        f"Skipping a too small image file: {tmp_path / 'src' / 'dot.png'} (1x1 px, under 16 px)",
        f"Skipping a too small image file: {tmp_path / 'src' / 'strip.png'} (400x3 px, under 16 px)"]
    assert cache.rows["image"].tolist() == ["0.png", "1.png"] and cache.skipped == names
    with pytest.raises(ValueError, match=r"at least 16 px on each side.*is 1x1 px. Received: path='.*dot.png'"):
        images.build_cache(frame, image_size=32, cache_dir=tmp_path / "strict", strict=True, progress=False)
    assert list((tmp_path / "strict").iterdir()) == []


def test_build_cache_writes_only_into_its_folder(collection, tmp_path, monkeypatch):
    src = tmp_path / "dataset"
    shutil.copytree(collection, src)
    frame = _load_frame(src)

    def tree(root):
        return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
                for p in root.rglob("*")}

    def digest(root):
        return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file())).hexdigest()

    for p in [src, *src.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        monkeypatch.chdir(tmp_path)                       # a stray relative write would land here
        monkeypatch.setenv("COVIDXR_CACHE_DIR", str(tmp_path / "env-cache"))
        dataset_before, outside_before = tree(src), sorted(p.name for p in tmp_path.iterdir())
        digest_before = digest(src)
        cache = images.build_cache(frame, image_size=32, cache_dir=tmp_path / "cache", progress=False)
        images.build_cache(frame, image_size=32, cache_dir=tmp_path / "cache", progress=False)   # reuse
        images.list_caches(tmp_path / "cache")
        for path in frame["path"]:
            images.load_image(path)
        assert tree(src) == dataset_before
        assert digest(src) == digest_before
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*outside_before, "cache"])
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.key]
        assert sorted(p.name for p in cache.path.iterdir()) == ["cache.json", "images.npy", "rows.csv"]
    finally:
        for p in [src, *src.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_one_minimum_image_size_for_the_cache_and_the_hash_index(tmp_path):
    """load_radiograph is the one rule: the cache skips a 1x1 image, the hash index gives it blank hashes
    (never merged), and strict reading refuses it."""
    Image.new("L", (1, 1), 0).save(tmp_path / "a.png")
    Image.new("L", (images.MIN_IMAGE_SIDE - 1, 40), 0).save(tmp_path / "b.png")  # two tiny dark images alike
    Image.new("L", (40, 40), 90).save(tmp_path / "c.png")
    frame = pd.DataFrame({"image": [f"{n}.png" for n in "abc"], "path": [str(tmp_path / f"{n}.png") for n in "abc"]})
    with pytest.raises(ValueError, match=rf"at least {images.MIN_IMAGE_SIDE} px on each side \(a radiograph\); "
                                         r"this one is 1x1 px\. Received: path='.*a\.png'"):
        images.load_radiograph(tmp_path / "a.png")
    hashes = images.HashIndex(tmp_path / "cache").hashes(frame)
    assert list(hashes["exact"] == "") == [True, True, False]
    with pytest.warns(UserWarning, match=r"Skipping a too small image file: .*a\.png \(1x1 px"):
        cache = images.build_cache(frame, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    assert list(cache.rows["image"]) == ["c.png"]
