"""Hostile-input catalogue: each case must end in a clear error or a reported skip — never a
crash with an unrelated exception, a hang, or a write outside the expected folders.

Running this file prints the catalogue with each case's outcome (``-s`` to see it)."""

from __future__ import annotations

import io
import os
import resource
import signal
import struct
import time
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from covidxr import data, images

HEADER = "patientid,finding,view,modality,folder,filename\n"
CATALOGUE: list[tuple[str, str]] = []


def _record(case, outcome):
    CATALOGUE.append((case, outcome))


@pytest.fixture(scope="module", autouse=True)
def _print_catalogue():
    yield
    if CATALOGUE:
        width = max(len(c) for c, _ in CATALOGUE)
        print("\nhostile-input catalogue:")
        for case, outcome in CATALOGUE:
            print(f"  {case:<{width}}  {outcome[:110]}")


def _dataset(tmp_path, text: bytes | str, *, images=("a.png",)):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.fromarray(np.full((8, 8), 128, np.uint8)).save(root / "images" / name)
    (root / "metadata.csv").write_bytes(text.encode() if isinstance(text, str) else text)
    return root


def _outcome(root, **kwargs):
    """Read and describe what happened: 'error: ...' or 'ok: N rows (warnings)'."""
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            frame = data.read_metadata(root, **kwargs)
            result = f"ok: {len(frame)} rows" + (f" ({len(caught)} warning(s))" if caught else "")
        except (ValueError, FileNotFoundError) as err:
            result = f"{type(err).__name__}: {err}"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before, "wrote into the dataset"
    return result


METADATA_CASES = {
    "missing columns": (HEADER.replace("finding,", "") + "1,PA,X-ray,images,a.png\n", "ValueError: "),
    "extra columns": ("x,y," + HEADER.strip() + ",z\n1,2,1,COVID-19,PA,X-ray,images,a.png,3\n", "ok: 1 rows"),
    "duplicate rows": (HEADER + "1,COVID-19,PA,X-ray,images,a.png\n" * 3, "ok: 1 rows"),
    "non-UTF-8 bytes": (HEADER.encode() + b"1,COVID-19,PA,X-ray,images,a.png\n2,Caf\xe9,PA,X-ray,images,a.png\n",
                        "ok: 1 rows"),
    "quoted newlines": (HEADER + '1,"COVID-19",PA,X-ray,images,"a.png"\n2,"No\nFinding",PA,X-ray,images,a.png\n',
                        "ok: 1 rows"),
    "empty file": ("", "ValueError: "),
    "header only": (HEADER, "ok: 0 rows"),
    "filename with ..": (HEADER + "1,COVID-19,PA,X-ray,images,../a.png\n", "ValueError: "),
    "absolute filename": (HEADER + "1,COVID-19,PA,X-ray,images,/etc/passwd\n", "ValueError: "),
    "folder with ..": (HEADER + "1,COVID-19,PA,X-ray,..,a.png\n", "ValueError: "),
    "blank filename": (HEADER + "1,COVID-19,PA,X-ray,images,\n", "ValueError: "),
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_metadata_cases(tmp_path, case):
    text, expected = METADATA_CASES[case]
    outcome = _outcome(_dataset(tmp_path, text), task=None)
    _record(f"metadata: {case}", outcome)
    assert outcome.startswith(expected), outcome


def test_metadata_symlink_out(tmp_path):
    root = _dataset(tmp_path, HEADER + "1,COVID-19,PA,X-ray,images,link.png\n")
    (tmp_path / "outside.png").write_bytes(b"secret")
    (root / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    outcome = _outcome(root, task=None)
    _record("metadata: symlink out of images/", outcome)
    assert outcome.startswith("ValueError: ") and "resolves outside" in outcome


def test_metadata_100k_rows(tmp_path):
    rows = "".join(f"{i % 5000},{'COVID-19' if i % 3 else 'No Finding'},PA,X-ray,images,a.png\n" for i in range(100_000))
    root = _dataset(tmp_path, HEADER + rows)
    start = time.perf_counter()
    outcome = _outcome(root, task=None)
    elapsed = time.perf_counter() - start
    _record("metadata: 100k rows", f"{outcome} in {elapsed:.1f} s")
    assert outcome.startswith("ok: 1 rows")  # one image listed 100k times: kept once, with a warning
    assert elapsed < 60


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_fuzz_metadata_bytes(tmp_path_factory, blob):
    root = _dataset(tmp_path_factory.mktemp("fz"), HEADER.encode() + blob)
    _outcome(root, task=None, views=None, modality=None)  # must not raise anything else


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=25), st.sampled_from(["PA", "AP", "L", "", "?"]),
                          st.text(max_size=20)), max_size=8))
def test_fuzz_metadata_cells(tmp_path_factory, rows):
    frame = pd.DataFrame(rows, columns=["patientid", "finding", "view", "filename"]).assign(modality="X-ray")
    root = _dataset(tmp_path_factory.mktemp("fz"), frame.to_csv(index=False))
    outcome = _outcome(root, task=None)
    assert outcome.startswith(("ok:", "ValueError", "FileNotFoundError"))


def test_catalogue_is_complete():
    """The catalogue names every hostile metadata and image case of the reliability issue."""
    needed = {"missing columns", "extra columns", "duplicate rows", "non-UTF-8 bytes", "quoted newlines",
              "empty file", "filename with ..", "absolute filename"}
    assert needed <= set(METADATA_CASES)
    needed_images = {"truncated JPEG", "truncated PNG", "zero bytes", "HTML saved as .png", "1x1 image",
                     "20000x20000 PNG (header only)", "20000x20000 PNG (1-bit, 49 KB)", "16-bit PNG", "CMYK JPEG",
                     "animated GIF", "DICOM without pixel data", "DICOM with garbage pixel data"}
    assert needed_images <= set(IMAGE_CASES)



# --------------------------------------------------------------------------- hostile images
#
# Each case is decoded strictly (a clear ValueError/FileNotFoundError naming the file, or a
# uint8 (H, W) array), leniently (None and a warning naming the file, or the same array) and
# cached with one good image beside it (the cache's rows omit a bad file), under a time
# limit, with the folder's tree compared before and after (no writes outside the cache).
# Policy: an animated GIF (like any multi-frame file) gives its first frame; a decodable
# image with a side under images.MIN_IMAGE_SIDE px decodes, but build_cache skips it.


@contextmanager
def _time_limit(seconds):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""
    def _expired(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_header_only(path, side=20000):
    """A PNG whose header claims side x side 8-bit grey pixels, with one empty IDAT."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b""))
                     + _png_chunk(b"IEND", b""))


def _png_bomb(path, side=20000):
    """A valid 1-bit side x side PNG of zeros (~49 KB on disk; 400 MB were PIL to decode it).
    Built row by row through zlib, never holding the image in memory."""
    row = bytes(1 + (side + 7) // 8)            # filter byte + packed bits
    packer = zlib.compressobj(9)
    chunk = row * 400
    idat = b"".join(packer.compress(chunk) for _ in range(side // 400)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def _grey(h=48, w=40, seed=0):
    y, x = np.mgrid[0:h, 0:w]
    return np.clip(128 + 90 * np.sin(x / w * np.pi * (1 + seed)) * np.cos(y / h * np.pi), 0, 255).astype(np.uint8)


def _jpeg_bytes(mode="L"):
    buf = io.BytesIO()
    Image.fromarray(_grey()).convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png_bytes(image=None):
    buf = io.BytesIO()
    (image or Image.fromarray(_grey())).save(buf, format="PNG")
    return buf.getvalue()


def _dicom(path, *, pixels=b"default", rows=48, cols=40, syntax=None):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels == b"default":
        pixels = (_grey(rows, cols).astype(np.uint16) * 16).tobytes()
    if pixels is not None:
        ds.PixelData = pixels
    ds.save_as(path, enforce_file_format=True)
    return pydicom


def _gif(path):
    frames = [Image.fromarray(np.full((48, 40), v, np.uint8)) for v in (30, 220, 120)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _rle_dicom(path, side):
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    _dicom(path, pixels=encapsulate([os.urandom(200)]), rows=side, cols=side, syntax=RLELossless)


# name -> (file name, writer(path), expected: "error" | "ok" | "small")
IMAGE_CASES = {
    "truncated JPEG": ("t.jpg", lambda p: p.write_bytes(_jpeg_bytes()[: len(_jpeg_bytes()) // 2]), "error"),
    "truncated PNG": ("t.png", lambda p: p.write_bytes(_png_bytes()[:-200]), "error"),
    "zero bytes": ("z.png", lambda p: p.write_bytes(b""), "error"),
    "HTML saved as .png": ("h.png", lambda p: p.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>\n"),
                           "error"),
    "1x1 image": ("one.png", lambda p: Image.new("L", (1, 1), 200).save(p), "small"),
    "3x2000 strip": ("strip.png", lambda p: Image.new("L", (2000, 3), 200).save(p), "small"),
    "20000x20000 PNG (header only)": ("bomb0.png", _png_header_only, "error"),
    "20000x20000 PNG (1-bit, 49 KB)": ("bomb1.png", _png_bomb, "error"),
    "16-bit PNG": ("i16.png", lambda p: Image.fromarray(_grey().astype(np.uint16) * 257).save(p), "ok"),
    "CMYK JPEG": ("cmyk.jpg", lambda p: p.write_bytes(_jpeg_bytes("CMYK")), "ok"),
    "animated GIF": ("anim.gif", _gif, "ok"),
    "JPEG bytes named .png": ("jpeg.png", lambda p: p.write_bytes(_jpeg_bytes()), "ok"),
    "PNG bytes named .dcm": ("png.dcm", lambda p: p.write_bytes(_png_bytes()), "error"),
    "DICOM without pixel data": ("nopix.dcm", lambda p: _dicom(p, pixels=None), "error"),
    "DICOM with garbage pixel data": ("garbage.dcm", lambda p: _dicom(p, pixels=os.urandom(1001)), "error"),
    "DICOM, garbage RLE-compressed pixels": ("rle.dcm", lambda p: _rle_dicom(p, 48), "error"),
    "DICOM claiming 20000x20000 (RLE)": ("bomb.dcm", lambda p: _rle_dicom(p, 20000), "error"),
    # random bytes of exactly the right length are a valid (noise) image: not detectable
    "DICOM, random pixels of the right length": ("noise.dcm", lambda p: _dicom(p, pixels=os.urandom(48 * 40 * 2)),
                                                 "ok"),
    "directory named .png": ("dir.png", lambda p: p.mkdir(), "error"),
    "named pipe (FIFO) as .png": ("fifo.png", lambda p: os.mkfifo(p), "error"),
    "symlink to /dev/zero as .png": ("zero.png", lambda p: p.symlink_to("/dev/zero"), "error"),
}


def _tree(root):
    return {p.relative_to(root).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def _reason(err):
    """The gist of an error: the decoder's own error for an undecodable file."""
    text = str(err)
    if "cannot be decoded (" in text:
        return " ".join(text.split("cannot be decoded (", 1)[1].rsplit("). Received", 1)[0].split())
    return f"{type(err).__name__}: {' '.join(text.rsplit(' Received:', 1)[0].split())}"


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_cases(tmp_path, case):
    name, write, expected = IMAGE_CASES[case]
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_grey(seed=3)).save(folder / "good.png")
    path = folder / name
    write(path)
    before = _tree(folder)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with _time_limit(10):
        try:
            strict = images.load_image(path)
        except (ValueError, FileNotFoundError) as err:
            strict = err
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lenient = images.load_image(path, strict=False)
        frame = pd.DataFrame({"image": ["good.png", name], "path": [str(folder / "good.png"), str(path)]})
        with warnings.catch_warnings(record=True) as cache_warnings:
            warnings.simplefilter("always")
            cache = images.build_cache(frame, image_size=32, cache_dir=tmp_path / "cache", progress=False)
        try:
            images.build_cache(frame, image_size=32, cache_dir=tmp_path / "strict", strict=True, progress=False)
            strict_cache, strict_cache_error = "kept", ""
        except (ValueError, FileNotFoundError) as err:
            strict_cache, strict_cache_error = _reason(err), str(err)
    elapsed = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    kept = name in set(cache.rows["image"])
    if isinstance(strict, Exception):
        outcome = f"error, cache skips it ({elapsed:.2f} s): {_reason(strict)}"
    elif kept:
        outcome = f"decoded {strict.shape[1]}x{strict.shape[0]} px, cached ({elapsed:.2f} s)"
    else:
        outcome = f"decoded {strict.shape[1]}x{strict.shape[0]} px, cache skips it ({elapsed:.2f} s): {strict_cache}"
    _record(f"image: {case}", outcome)

    assert _tree(folder) == before, "wrote into the image folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "in", "strict"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.key]
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"
    warned = [str(w.message) for w in caught]
    if expected == "error":
        assert isinstance(strict, (ValueError, FileNotFoundError)), strict
        assert f"Received: path='{path}'" in str(strict)
        assert lenient is None and any(m.startswith("Skipping") and m.endswith(str(path)) or f"{path} (" in m
                                       for m in warned), warned
        assert not kept and name in cache.skipped and cache.rows["image"].tolist() == ["good.png"]
        assert name in str([str(w.message) for w in cache_warnings])
        assert f"Received: path='{path}'" in strict_cache_error    # the strict build names the file ...
        assert list((tmp_path / "strict").iterdir()) == []          # ... and writes nothing
    else:
        assert isinstance(strict, np.ndarray) and strict.dtype == np.uint8 and strict.ndim == 2, strict
        np.testing.assert_array_equal(lenient, strict)
        if expected == "ok":
            assert kept and strict_cache == "kept"
        else:  # "small": decodes, but no radiograph: the cache skips it, naming it
            assert not kept and name in cache.skipped
            assert any(f"too small image file: {path}" in str(w.message) for w in cache_warnings)
            assert "at least 16 px" in strict_cache and f"Received: path='{path}'" in strict_cache_error
            assert list((tmp_path / "strict").iterdir()) == []


def test_animated_gif_gives_first_frame(tmp_path):
    _gif(tmp_path / "a.gif")
    out = images.load_image(tmp_path / "a.gif")
    assert out.shape == (48, 40) and (out == 30).all()


def test_png_bomb_is_small_on_disk(tmp_path):
    _png_bomb(tmp_path / "b.png")
    raw = (tmp_path / "b.png").read_bytes()
    assert len(raw) < 100_000
    # a real image: its IDAT inflates (streamed, 1 MB at a time) to 20000 rows of 1 + 2500 bytes
    idat = raw[8 + 25 + 8: -12 - 4]
    inflater, total, pending = zlib.decompressobj(), 0, idat
    while pending or not inflater.eof:
        total += len(inflater.decompress(pending, 2 ** 20))
        pending = inflater.unconsumed_tail
    assert total == 20000 * 2501
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"DecompressionBombError.*400000000 pixels.*Received: path='.*b\.png'"):
        images.load_image(tmp_path / "b.png")


# --------------------------------------------------------------------------- fuzzing the decoder

_SEEDS = {}


def _seeds(tmp):
    """Valid files to mutate: 8-bit and 16-bit PNG, JPEG, palette GIF, DICOM."""
    if not _SEEDS:
        _SEEDS[".png"] = _png_bytes()
        _SEEDS[".16.png"] = _png_bytes(Image.fromarray(_grey(24, 20).astype(np.uint16) * 257))
        _SEEDS[".jpg"] = _jpeg_bytes()
        buf = io.BytesIO()
        Image.fromarray(_grey(24, 20)).convert("P").save(buf, format="GIF")
        _SEEDS[".gif"] = buf.getvalue()
        _dicom(tmp / "seed.dcm", rows=24, cols=20)
        _SEEDS[".dcm"] = (tmp / "seed.dcm").read_bytes()
    return _SEEDS


def _fix_png_crcs(raw: bytearray) -> bytearray:
    """Recompute each PNG chunk's CRC, so that mutations reach the decoder behind the check."""
    pos = 8
    while pos + 12 <= len(raw):
        length = struct.unpack(">I", raw[pos: pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(raw):
            break
        raw[end: end + 4] = struct.pack(">I", zlib.crc32(bytes(raw[pos + 4: end])) & 0xFFFFFFFF)
        pos = end + 4
    return raw


def _check_decoder(path: Path):
    """load_image(strict=False): a uint8 (H, W) array (which preprocess takes) or None with a
    warning naming the file; nothing else, within 5 s."""
    with _time_limit(5), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = images.load_image(path, strict=False)
        if out is None:
            assert any(str(w.message).startswith("Skipping") and str(path) in str(w.message) for w in caught)
        else:
            assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 2 and out.size > 0
            assert images.preprocess(out, image_size=16).shape == (16, 16)
    return out


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=600), suffix=st.sampled_from([".png", ".jpg", ".gif", ".dcm", ".bin"]),
       magic=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", bytes(128) + b"DICM"]))
def test_fuzz_decoder_random_bytes(tmp_path_factory, blob, suffix, magic):
    path = tmp_path_factory.mktemp("fz") / f"x{suffix}"
    path.write_bytes(magic + blob)
    _check_decoder(path)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from([".png", ".16.png", ".jpg", ".gif", ".dcm"]),
       edits=st.lists(st.tuples(st.one_of(st.floats(0, 1), st.integers(0, 400)), st.integers(0, 255)),
                      min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.floats(0.3, 1.0)), fix_crc=st.booleans())
def test_fuzz_decoder_mutated_files(tmp_path_factory, kind, edits, cut, fix_crc):
    tmp = tmp_path_factory.mktemp("fz")
    raw = bytearray(_seeds(tmp)[kind])
    for where, value in edits:   # a fraction of the length, or an offset in the headers
        raw[min(int(where * len(raw)) if isinstance(where, float) else where, len(raw) - 1)] = value
    if fix_crc and kind.endswith(".png"):
        raw = _fix_png_crcs(raw)
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    path = tmp / f"x{kind}"
    path.write_bytes(bytes(raw))
    _check_decoder(path)
