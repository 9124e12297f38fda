"""Fuzzing: generated and mutated inputs through the whole app and its decoders; nothing may crash.

    python bench/reliability/fuzz.py [--count 100000] [--seed 1] [--workers 2] [--timeout 10]
    python bench/reliability/fuzz.py --replay <reproducer.json>      # one saved input again, traceback printed

Each input is made by one generator from `random.Random(f"{seed}:{index}")`, so (seed, index) rebuilds it:

  image       PNG/JPEG/TIFF/BMP made with Pillow (random size, mode, bit depth, compression, frames), then
              maybe truncated, bit-flipped or its header's size patched; any content type, or none
  dicom       a pydicom dataset with random Rows/Columns/BitsAllocated/BitsStored/PixelRepresentation/
              SamplesPerPixel/PhotometricInterpretation/frames/rescale/window/LUTs and a transfer syntax
              that may not match the pixel data (raw, encapsulated, too short, too long), maybe mutated
  multipart   odd boundaries (quoted, long, non-Latin-1, absent), 0-3 parts, bare LF, no closing boundary
  base64      {"image": ...} with junk: whitespace, bad characters, no padding, data: URLs, non-strings
  oip         OIP JSON: unknown names, wrong/huge/negative shapes, wrong datatypes, ragged or nested data,
              NaN, integers past int64, odd outputs and parameters, deep nesting
  oip-binary  the binary extension: Inference-Header-Content-Length odd values, binary_data_size that lie,
              raw binary bodies
  event       OCI CloudEvents and S3 notifications (tests/data/events) with fields replaced by junk; some name
              objects in an allowed bucket of a real SeaweedFS, so events are read, inferred and answered
  mutate      byte mutations of real seeds: samples/*, pydicom's test files, tests/data/fuzz/*, the events
  route       gateway calls with random methods, paths, queries and headers

An input goes, at random, to the app as a direct invocation or as an API Gateway call (each through the fdk's
own request handling, `fdk.runner.handle_request` with the headers the Fn agent sends, into
`onnxfn.fn.handler`) serving models/digits-cnn or models/lesion-unet, or straight to its decoder
(payload.classify + decode_image, tensor.parse_request, binary.frame + parse_request, envelopes.parse).

A crash is anything but a clean onnxfn error: an uncaught exception (an app answer 500 internal_error, or a
decoder raising something not an OnnxfnError), any 5xx, a non-JSON answer, a worker's death, a hang (an input
running past --timeout: its worker is killed and replaced) or a worker past --max-rss-mb. Each crash's input
is saved under --out (body + JSON with headers, target and traceback) for --replay. Worker processes (spawned,
one ONNX Runtime thread each) are watched from here: their current input, its start, their RSS from /proc.
`main(argv)` prints the figures and returns them.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import functools
import io
import json
import logging
import math
import multiprocessing as mp
import os
import random
import resource
import struct
import sys
import sysconfig
import tempfile
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT / "shared", ROOT):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

MODELS = {"digits": ROOT / "models" / "digits-cnn", "unet": ROOT / "models" / "lesion-unet"}
MODEL_NAMES = {"digits": "digits-cnn", "unet": "lesion-unet"}
SEEDS = ROOT / "tests" / "data" / "fuzz"
EVENTS = ROOT / "tests" / "data" / "events"
BUCKET = "fuzz-events"   # the allowed event source (ONNXFN_EVENT_SOURCES=s3://fuzz-events/)
OBJECTS = {"in/digit-7.png": ROOT / "samples" / "digit-7.png", "in/phantom.dcm": ROOT / "samples" / "phantom.dcm",
           "in/phantom": ROOT / "samples" / "phantom.dcm", "in/broken.png": None}
WEIGHTS = {"image": 20, "dicom": 15, "multipart": 10, "base64": 8, "oip": 15, "oip-binary": 8, "event": 8,
           "mutate": 12, "route": 4}


@dataclass
class Case:
    """One generated input: where it goes and what it carries."""
    generator: str
    target: str                  # direct, gateway or decoder
    model: str = "digits"        # digits or unet
    body: bytes = b""
    content_type: str | None = None
    method: str = "POST"
    url: str = "/"
    headers: dict = field(default_factory=dict)   # other request headers, lower-case names
    decoder: str = "image"       # image, tensor, binary or event: what a decoder target runs


# -- byte mutation -----------------------------------------------------------------------------------

INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80",
               b"\xff\xff\xff\xff", b"\x00\x01\x00\x00", b"\xfe\xff\x00\xe0", b"\xe0\x7f\x10\x00"]


def mutate(rng: random.Random, data: bytes, rounds: int | None = None) -> bytes:
    """A few random byte mutations, half of them in the first 512 bytes (where headers are)."""
    out = bytearray(data)
    for _ in range(rounds or rng.randint(1, 4)):
        n = len(out)

        def at() -> int:
            return rng.randrange(min(n, 512) if rng.random() < 0.5 else n) if n else 0
        op = rng.randrange(7)
        if op == 0 and n:                                   # flip bits
            for _ in range(rng.randint(1, 8)):
                out[at()] ^= 1 << rng.randrange(8)
        elif op == 1 and n:                                 # truncate
            del out[rng.randrange(n):]
        elif op == 2:                                       # insert random bytes
            out[at():at()] = rng.randbytes(rng.randint(1, 64))
        elif op == 3 and n:                                 # delete a range
            i = at()
            del out[i:i + rng.randint(1, 64)]
        elif op == 4 and n:                                 # overwrite with an interesting value
            value = rng.choice(INTERESTING)
            i = at()
            out[i:i + len(value)] = value
        elif op == 5 and n:                                 # duplicate a chunk
            i = at()
            chunk = out[i:i + rng.randint(1, 256)]
            j = at()
            out[j:j] = chunk
        elif n:                                             # set a byte
            out[at()] = rng.randrange(256)
    return bytes(out)


def junk(rng: random.Random):
    """A JSON value of a random kind: what a field that should be something else gets."""
    return rng.choice([None, True, False, 0, -1, 2 ** 63, 2 ** 70, -2 ** 64, 1e308, -0.0, float("nan"), float("inf"),
                       "", " ", "x" * rng.randint(1, 3000), "é€\u202e\x00", "../../etc/passwd", "a/../b", "%2F%00",
                       "\ud800", [], [1, "a"], {}, {"a": {"b": None}}, [[[]]], "0x10", "1e9"])


def json_bytes(rng: random.Random, document) -> bytes:
    """JSON text of `document`, sometimes with its bytes cut or damaged."""
    text = json.dumps(document, allow_nan=True, ensure_ascii=rng.random() < 0.5)
    data = text.encode("utf-8", "surrogatepass")
    r = rng.random()
    if r < 0.05:
        return data[:rng.randrange(len(data) + 1)]
    if r < 0.1:
        return mutate(rng, data, 1)
    return data


def nested(depth: int) -> bytes:
    """JSON nested `depth` levels deep."""
    return b"[" * depth + b"]" * depth


# -- images ------------------------------------------------------------------------------------------

FORMAT_MODES = {"PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "L", "RGB"],
                "JPEG": ["L", "RGB", "CMYK", "L", "RGB"],
                "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr"],
                "BMP": ["1", "L", "P", "RGB", "RGBA"]}
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff", "BMP": "image/bmp"}
TYPES = ["image/png", "image/jpeg", "image/tiff", "image/bmp", "application/dicom", "application/octet-stream",
         None, "", "text/plain", "application/json", "image/png; charset=x", "IMAGE/PNG", "image/gif",
         "multipart/form-data", "image/", ";", "application/x-www-form-urlencoded", "image/x-ms-bmp",
         "application/dicom; transfer-syntax=*", "*/*", "image/png\x00"]


def pil_image(rng: random.Random, fmt: str, mode: str, width: int, height: int):
    """A Pillow image of `mode` with random pixels (smooth or noise)."""
    import numpy as np
    from PIL import Image
    g = np.random.default_rng(rng.getrandbits(32))
    if mode in ("I;16",):
        arr = g.integers(0, 65536, (height, width), dtype=np.uint16)
        return Image.fromarray(arr)
    if mode == "I":
        low, high = rng.choice([(0, 65536), (-2 ** 31, 2 ** 31 - 1), (0, 256)])
        return Image.fromarray(g.integers(low, high, (height, width), dtype=np.int64).astype(np.int32))
    if mode == "F":
        arr = g.normal(0, rng.choice([1.0, 1e6, 1e38]), (height, width)).astype(np.float32)
        if rng.random() < 0.2:
            arr[0, 0] = rng.choice([np.nan, np.inf, -np.inf])
        return Image.fromarray(arr)
    bands = {"1": 1, "L": 1, "P": 1, "LA": 2, "RGB": 3, "YCbCr": 3, "RGBA": 4, "CMYK": 4}[mode]
    arr = g.integers(0, 256, (height, width, bands), dtype=np.uint8)
    base = Image.fromarray(arr[..., 0] if bands == 1 else arr)
    if mode in ("1", "P", "CMYK", "YCbCr"):
        base = base.convert(mode)
    return base


def encode_image(rng: random.Random, fmt: str | None = None, small: bool = True) -> tuple[bytes, str]:
    """A valid-ish image file: (bytes, its Pillow format name)."""
    fmt = fmt or rng.choice(list(FORMAT_MODES))
    mode = rng.choice(FORMAT_MODES[fmt])
    r = rng.random()
    width, height = (rng.randint(1, 24), rng.randint(1, 24)) if r < 0.6 or small and r < 0.97 else \
        (rng.randint(1, 256), rng.randint(1, 256)) if r < 0.99 else (rng.randint(1, 1200), rng.randint(1, 4))
    im = pil_image(rng, fmt, mode, width, height)
    out = io.BytesIO()
    options: dict = {}
    if fmt == "TIFF":
        options["compression"] = rng.choice([None, "tiff_lzw", "tiff_deflate", "packbits", "tiff_adobe_deflate"])
        if rng.random() < 0.1:
            options.update(save_all=True, append_images=[im.copy()])
    elif fmt == "JPEG":
        options.update(quality=rng.randint(1, 100), progressive=rng.random() < 0.3)
    elif fmt == "PNG":
        if mode == "P" and rng.random() < 0.5:
            options["bits"] = rng.choice([1, 2, 4])
        if rng.random() < 0.2:
            options["transparency"] = 0 if mode in ("L", "P") else None
            options = {k: v for k, v in options.items() if v is not None}
    try:
        im.save(out, format=fmt, **options)
    except (OSError, ValueError, KeyError, TypeError):
        out = io.BytesIO()
        im.convert("L").save(out, format=fmt)
    return out.getvalue(), fmt


def patch_size(rng: random.Random, data: bytes, fmt: str) -> bytes:
    """The header's width/height replaced by random values (PNG: CRC fixed or not; BMP: signed fields)."""
    big = lambda: rng.choice([0, 1, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, rng.randrange(2 ** 32),  # noqa: E731
                              rng.randint(4000, 20000)])
    out = bytearray(data)
    if fmt == "PNG" and len(out) >= 33:
        out[16:24] = struct.pack(">II", big(), big())
        if rng.random() < 0.8:
            out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    elif fmt == "BMP" and len(out) >= 26:
        out[18:26] = struct.pack("<ii", big() - 2 ** 31 if rng.random() < 0.3 else big() & 0x7FFFFFFF,
                                 -(big() & 0x7FFFFFFF) if rng.random() < 0.3 else big() & 0x7FFFFFFF)
    else:
        return mutate(rng, data)
    return bytes(out)


def gen_image(rng: random.Random) -> Case:
    """An image file through /predict, a direct invocation or the image decoder."""
    data, fmt = encode_image(rng)
    r = rng.random()
    if r < 0.15:
        data = data[:rng.randrange(len(data))]
    elif r < 0.35:
        data = mutate(rng, data)
    elif r < 0.45:
        data = patch_size(rng, data, fmt)
    ctype = MIME[fmt] if rng.random() < 0.6 else rng.choice(TYPES)
    return _image_case(rng, "image", data, ctype)


def _image_case(rng: random.Random, generator: str, data: bytes, ctype: str | None) -> Case:
    target = rng.choice(["direct", "gateway", "decoder"])
    url = "/predict" + ("?binary_data_output=true" if rng.random() < 0.05 else "")
    return Case(generator, target, rng.choice(["digits", "unet"]), data, ctype, "POST", url if target == "gateway"
                else "/", decoder="image")


# -- DICOM -------------------------------------------------------------------------------------------

SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.5", "1.2.3.4.5"]
PHOTOMETRIC = ["MONOCHROME2", "MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "HSV",
               "", "ARGB", "CMYK"]
SOP_CLASSES = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.11",
               "1.2.840.10008.5.1.4.1.1.481.2", "1.2.3"]


def dicom_dataset(rng: random.Random, safe: bool = False) -> bytes:
    """A DICOM file (or bare dataset) whose attributes may disagree with its pixel data and transfer syntax."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid
    pick = (lambda choices, usual: usual) if safe else (lambda choices, usual: rng.choice(choices)  # noqa: E731
                                                         if rng.random() < 0.35 else usual)
    rows = pick([0, 1, 2, 3, 255, 4096, 65535, 20000], rng.randint(1, 40))
    cols = pick([0, 1, 3, 7, 4096, 65535, 20000], rng.randint(1, 40))
    samples = pick([0, 2, 3, 4, 3], 1)
    allocated = pick([0, 1, 8, 12, 16, 32, 64, 24], rng.choice([8, 16]))
    stored = pick([0, 1, 7, 12, 17, 32, 64], allocated if allocated in (8, 16) else 8)
    syntax = pick(SYNTAXES, rng.choice(SYNTAXES[:3]))
    ds = Dataset()
    ds.SOPClassUID = pick(SOP_CLASSES, SOP_CLASSES[0])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(rng.random())])
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.BitsAllocated, ds.BitsStored = allocated, stored
    ds.HighBit = pick([0, 31, 63, 255], max(stored - 1, 0))
    ds.PixelRepresentation = pick([0, 1, 2], rng.randint(0, 1))
    ds.PhotometricInterpretation = pick(PHOTOMETRIC, "RGB" if samples == 3 else
                                        rng.choice(["MONOCHROME2", "MONOCHROME1"]))
    if samples != 1 or rng.random() < 0.1:
        ds.PlanarConfiguration = pick([0, 1, 2], 0)
    if rng.random() < 0.3:
        _text(ds, 0x00280008, "IS", pick(["0", "2", "-1", "1000000", "1.5", "x", ""], "1"))
    if rng.random() < 0.5:
        _text(ds, 0x00281053, "DS", pick(["0", "-1", "1e308", "nan", "inf", "1e-300", "1,5"], rng.choice(["1", "2.5"])))
        _text(ds, 0x00281052, "DS", pick(["-1e308", "nan", "x", "1\\2"], rng.choice(["-1024", "0"])))
    if rng.random() < 0.4:
        _text(ds, 0x00281050, "DS", pick(["nan", "1e400", "40\\50", "-inf", "a"], "40"))
        _text(ds, 0x00281051, "DS", pick(["0", "-400", "nan", "400\\0", "1e-320", "\\"], "400"))
    if rng.random() < 0.1 or ds.PhotometricInterpretation == "PALETTE COLOR":
        for color in ("Red", "Green", "Blue"):
            setattr(ds, f"{color}PaletteColorLookupTableDescriptor",
                    [pick([0, 1, 65535], 256), pick([0, 65535], 0), pick([0, 1, 7, 32], rng.choice([8, 16]))])
            setattr(ds, f"{color}PaletteColorLookupTableData", rng.randbytes(pick([0, 1, 3, 1024], 512)))
    if rng.random() < 0.08:
        item = Dataset()
        item.LUTDescriptor = [pick([0, 1, 65535], 16), pick([0, 65535], 0), pick([0, 1, 8, 17], 16)]
        item.LUTData = [rng.randrange(65536) for _ in range(pick([0, 1, 3], 16))]
        item.ModalityLUTType = "HU"
        ds.ModalityLUTSequence = [item]
    frames = 1
    if 0x00280008 in ds:
        try:
            frames = max(1, int(float(ds[0x00280008].value)))
        except (ValueError, OverflowError, TypeError):
            pass
    expected = rows * cols * samples * min(frames, 4) * max(allocated, 1) // 8
    length = min(expected, 65_536)
    if not safe and rng.random() < 0.3:
        length = rng.choice([0, 1, max(length - 1, 0), length + 1, length // 2, length * 2 + 7, 3])
    pixels = rng.randbytes(min(length, 140_000))
    compressed = syntax not in SYNTAXES[:4]
    if compressed and rng.random() < 0.7:
        from pydicom.encaps import encapsulate
        frames_data = [pixels] if rng.random() < 0.8 else [pixels[:len(pixels) // 2], pixels[len(pixels) // 2:]]
        pixels = encapsulate([f + b"\x00" * (len(f) % 2) + b"\x00\x00" * (len(f) < 2) for f in frames_data])
    if len(pixels) % 2:
        pixels += b"\x00"
    ds.PixelData = pixels
    if not safe and rng.random() < 0.05:
        del ds.PixelData
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    if compressed and "PixelData" in ds:
        ds["PixelData"].VR = "OB"
    return _write(rng, ds, safe)


def _text(ds, tag: int, vr: str, text: str) -> None:
    """A text element as raw bytes, valid or not (pydicom refuses to set an invalid DS or IS value)."""
    from pydicom.dataelem import RawDataElement
    raw = text.encode("latin-1")
    raw += b" " * (len(raw) % 2)
    ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)


def _write(rng: random.Random, ds, safe: bool) -> bytes:
    from pydicom import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian
    out = io.BytesIO()
    file_format = safe or rng.random() < 0.85
    try:
        dcmwrite(out, ds, enforce_file_format=file_format)
    except Exception:  # pydicom refuses some combinations (big endian, odd VRs): the plainest encoding then
        out = io.BytesIO()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        try:
            dcmwrite(out, ds, enforce_file_format=True)
        except Exception:  # still refused: the sample CT, whose bytes the caller may mutate
            return (ROOT / "samples" / "phantom.dcm").read_bytes()
    return out.getvalue()


def gen_dicom(rng: random.Random) -> Case:
    """A DICOM file through the app or the DICOM decoder."""
    data = dicom_dataset(rng)
    r = rng.random()
    if r < 0.1:
        data = data[:rng.randrange(len(data) + 1)]
    elif r < 0.3:
        data = mutate(rng, data)
    ctype = "application/dicom" if rng.random() < 0.6 else rng.choice(TYPES)
    case = _image_case(rng, "dicom", data, ctype)
    case.model = "unet" if rng.random() < 0.8 else "digits"
    return case


# -- multipart and base64 ----------------------------------------------------------------------------

BOUNDARIES = ["b", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "x" * 70, "x" * 500, "a b", '"quoted"', "ü€", "--", "",
              "\r\n", "bound;ary", "=", "ab=cd", "\x00"]


def gen_multipart(rng: random.Random) -> Case:
    """A multipart/form-data body with odd boundaries and parts."""
    boundary = rng.choice(BOUNDARIES) if rng.random() < 0.4 else f"fz{rng.getrandbits(48):x}"
    written = boundary if rng.random() < 0.9 else boundary + "x"
    eol = "\r\n" if rng.random() < 0.85 else rng.choice(["\n", "\r", ""])
    parts = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        if rng.random() < 0.7:
            content, fmt = encode_image(rng)
            ptype = MIME[fmt] if rng.random() < 0.7 else rng.choice(TYPES)
            if rng.random() < 0.1:
                content = dicom_dataset(rng, safe=True)
                ptype = "application/dicom"
        else:
            content, ptype = rng.randbytes(rng.randint(0, 200)), rng.choice(TYPES)
        disposition = rng.choice(['form-data; name="file"; filename="x.png"', 'form-data; name="field"',
                                  "form-data; filename*=UTF-8''%C3%A9.png", "", 'attachment; filename="a"',
                                  'form-data; name="file"; filename=""'])
        head = f"Content-Disposition: {disposition}{eol}" if disposition else ""
        if ptype is not None and rng.random() < 0.8:
            head += f"Content-Type: {ptype}{eol}"
        if rng.random() < 0.1:
            head += f"X-Junk: {'y' * rng.randint(0, 5000)}{eol}"
        parts.append(head.encode("utf-8", "surrogatepass") + eol.encode() + content)
    delimiter = b"--" + written.encode("utf-8", "surrogatepass")
    body = (rng.randbytes(rng.randint(0, 20)) + eol.encode() if rng.random() < 0.1 else b"")
    body += b"".join(delimiter + eol.encode() + p + eol.encode() for p in parts)
    if rng.random() < 0.85:
        body += delimiter + b"--" + eol.encode()
    if rng.random() < 0.15:
        body = mutate(rng, body)
    ctype = rng.choice([f"multipart/form-data; boundary={boundary}", f'multipart/form-data; boundary="{boundary}"',
                        "multipart/form-data", f"multipart/form-data;boundary={boundary};charset=utf-8",
                        f"Multipart/Form-Data; BOUNDARY={boundary}", f"multipart/mixed; boundary={boundary}"]
                       if rng.random() < 0.4 else [f"multipart/form-data; boundary={boundary}"])
    return _image_case(rng, "multipart", body, ctype)


def gen_base64(rng: random.Random) -> Case:
    """{"image": base64} with junk."""
    content, fmt = encode_image(rng) if rng.random() < 0.85 else (dicom_dataset(rng, safe=True), "DICOM")
    text = base64.b64encode(content).decode()
    r = rng.random()
    if r < 0.1:
        text = text.rstrip("=")
    elif r < 0.2:
        i = rng.randrange(len(text) + 1)
        text = text[:i] + rng.choice(["!", "*", "é", "\x00", "=", "-_", "===="]) + text[i:]
    elif r < 0.3:
        text = "\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + rng.choice(["", "\n", " \t "])
    elif r < 0.4:
        text = f"data:{rng.choice(['image/png', 'application/dicom', '', 'x;base64', 'image/png;base64'])}," + text
    elif r < 0.45:
        text = base64.urlsafe_b64encode(content).decode()
    elif r < 0.5:
        text = text[:rng.randrange(len(text) + 1)]
    document: object = {"image": text}
    if rng.random() < 0.1:
        document["image"] = junk(rng)
    if rng.random() < 0.2:
        document["content_type"] = rng.choice(TYPES + [junk(rng)])
    if rng.random() < 0.05:
        document["inputs"] = junk(rng)
    if rng.random() < 0.05:
        document = [document]
    data = json_bytes(rng, document)
    ctype = "application/json" if rng.random() < 0.7 else rng.choice([None, "text/json", "application/x+json",
                                                                      "application/octet-stream", "image/png"])
    return _image_case(rng, "base64", data, ctype)


# -- OIP ---------------------------------------------------------------------------------------------

DATATYPES = ["FP32", "FP32", "FP32", "FP16", "FP64", "INT64", "UINT8", "BOOL", "BYTES", "fp32", "", None, 7]


def _shape(rng: random.Random, model: str) -> list:
    if model == "digits":
        shape = [rng.randint(0, 3), 1, 8, 8]
    else:
        shape = [rng.randint(0, 2), 1, 4 * rng.randint(1, 12), 4 * rng.randint(1, 12)]
    r = rng.random()
    if r < 0.08:
        shape[rng.randrange(4)] = rng.choice([-1, 10 ** 12, 2 ** 63, 0, 3, 1.0, True, "8", None])
    elif r < 0.14:
        shape = shape[:rng.randrange(5)] + ([1] if rng.random() < 0.5 else [])
    elif r < 0.18:
        shape = [10 ** 6, 10 ** 6, 8, 8] if model == "digits" else [1, 1, 4 * 10 ** 5, 4 * 10 ** 5]
    elif r < 0.22:
        shape = [1, 1, rng.choice([3, 5, 9, 2]), rng.choice([5, 7])]
    return shape


def _data(rng: random.Random, shape: list, datatype) -> object:
    count = math.prod(d for d in shape if isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 4096)
    count = min(count, 200_000)
    r = rng.random()
    if datatype == "BOOL":
        flat = [rng.random() < 0.5 for _ in range(count)]
    elif datatype == "BYTES":
        flat = ["a" * rng.randint(0, 3) for _ in range(count)]
    else:
        flat = [rng.uniform(-2, 2) for _ in range(count)]
    if r < 0.05:
        flat = flat[:-1] if flat else [1.0]
    elif r < 0.1:
        for _ in range(rng.randint(1, 3)):
            if flat:
                flat[rng.randrange(len(flat))] = junk(rng)
    elif r < 0.13 and flat:
        flat[0] = rng.choice([2 ** 64, -2 ** 63 - 1, 10 ** 400 if False else 1e308, float("nan"), 70000])
    if r > 0.8 and len(shape) > 1 and all(type(d) is int and 0 < d < 4096 for d in shape) and \
            math.prod(shape) == len(flat):
        import numpy as np
        return np.array(flat, dtype=object).reshape(shape).tolist()  # nested per the shape
    if 0.75 < r <= 0.8 and flat:
        return [flat[:1], flat[1:]]                                   # ragged
    return flat


def oip_document(rng: random.Random, model: str):
    """An OIP JSON request for `model` that may be wrong anywhere."""
    inputs = []
    for _ in range(rng.choice([1, 1, 1, 1, 0, 2])):
        shape = _shape(rng, model)
        datatype = rng.choice(DATATYPES) if rng.random() < 0.3 else "FP32"
        tensor = {"name": "image" if rng.random() < 0.9 else junk(rng), "shape": shape, "datatype": datatype,
                  "data": _data(rng, shape, datatype)}
        if rng.random() < 0.1:
            del tensor[rng.choice(list(tensor))]
        if rng.random() < 0.05:
            tensor["parameters"] = rng.choice([{"binary_data_size": 4}, junk(rng), {"binary_data": True}])
        inputs.append(tensor if rng.random() > 0.03 else junk(rng))
    document: dict = {"inputs": inputs if rng.random() > 0.03 else junk(rng)}
    if rng.random() < 0.3:
        document["outputs"] = rng.choice([[{"name": "logits"}], [{"name": "nope"}], junk(rng), [junk(rng)],
                                          [{"name": "logits", "parameters": {"binary_data": rng.choice(
                                              [True, False, "yes", 1, None])}}]])
    if rng.random() < 0.2:
        document["parameters"] = rng.choice([{"binary_data_output": rng.choice([True, False, "true", 0])}, junk(rng)])
    if rng.random() < 0.2:
        document["id"] = junk(rng)
    return document


def gen_oip(rng: random.Random) -> Case:
    """OIP JSON through the infer route, a direct invocation or tensor.parse_request."""
    model = rng.choice(["digits", "unet"])
    r = rng.random()
    if r < 0.03:
        data = nested(rng.choice([100, 5000, 200_000]))
        data = b'{"inputs": ' + data + b"}" if rng.random() < 0.5 else data
    elif r < 0.06:
        data = rng.randbytes(rng.randint(0, 100))
    else:
        data = json_bytes(rng, oip_document(rng, model))
    target = rng.choice(["direct", "gateway", "decoder"])
    name = MODEL_NAMES[model] if rng.random() < 0.9 else rng.choice(["other", "", "x" * 300, MODEL_NAMES[model] +
                                                                     "/versions/9"])
    url = f"/v2/models/{name}/infer"
    ctype = "application/json" if rng.random() < 0.8 else rng.choice(TYPES)
    return Case("oip", target, model, data, ctype, "POST", url if target == "gateway" else "/", decoder="tensor")


HEADER_VALUES = ["", " ", "-1", "abc", "1e3", "0x10", "²", "١٢", "99999999999999999999", "+5", " 5 ", "5.0"]


def gen_oip_binary(rng: random.Random) -> Case:
    """The binary extension: a JSON part then tensor bytes, or a raw binary body."""
    import numpy as np
    model = rng.choice(["digits", "unet"])
    if rng.random() < 0.25:                                   # raw binary request
        count = rng.choice([64, 63, 0, 1, 128, 4 * 16 * 4, 1024 * 4]) if model == "digits" else \
            rng.choice([16 * 16, 4, 0, 5, 64 * 64, 256 * 256])
        body = np.random.default_rng(rng.getrandbits(32)).normal(size=count).astype("<f4").tobytes()
        body = body[:len(body) - rng.choice([0, 0, 1, 3])] if body else body
        header = "0"
    else:
        document = oip_document(rng, model)
        blobs = []
        for tensor in document["inputs"] if isinstance(document.get("inputs"), list) else []:
            if not isinstance(tensor, dict) or rng.random() < 0.15:
                continue
            count = math.prod(d for d in tensor.get("shape") or [] if isinstance(d, int) and 0 <= d < 4096)
            blob = np.random.default_rng(rng.getrandbits(32)).normal(size=min(count, 1 << 20)).astype("<f4").tobytes()
            if tensor.get("datatype") == "BYTES":
                blob = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", "é".encode(), b"\xff\xfe")[:count])
            blob = blob if rng.random() < 0.8 else mutate(rng, blob)
            size = len(blob) if rng.random() < 0.8 else rng.choice([-1, len(blob) + 1, 2 ** 40, "4", True, 1.5])
            tensor.pop("data", None) if rng.random() < 0.9 else None
            tensor["parameters"] = {"binary_data_size": size}
            blobs.append(blob)
        head = json_bytes(rng, document)
        body = head + b"".join(blobs) + (rng.randbytes(rng.randint(1, 9)) if rng.random() < 0.05 else b"")
        header = str(len(head))
    if rng.random() < 0.15:
        header = rng.choice(HEADER_VALUES + [str(len(body) + 1), str(rng.randrange(len(body) + 1))])
    target = rng.choice(["direct", "gateway", "decoder"])
    ctype = "application/octet-stream" if rng.random() < 0.8 else rng.choice(TYPES)
    return Case("oip-binary", target, model, body, ctype, "POST",
                f"/v2/models/{MODEL_NAMES[model]}/infer" if target == "gateway" else "/",
                {"inference-header-content-length": header}, decoder="binary")


# -- events ------------------------------------------------------------------------------------------

def _event_seeds() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(EVENTS.glob("*.json"))]


def _paths(value, prefix=()):
    """Every path into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _replace(document, path, value):
    if not path:
        return value
    target = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return document


def event_document(rng: random.Random, allowed: bool):
    """A seed envelope with fields replaced, removed or pointed at the allowed bucket's objects."""
    document = json.loads(json.dumps(rng.choice(_event_seeds())))
    if allowed and rng.random() < 0.5:                        # an S3 notification naming a seeded object
        key = rng.choice(list(OBJECTS) + ["results/in/digit-7.png.json", "in/missing.png", "in/x.txt",
                                          "in%2Fdigit-7.png", "in/digit-7.png+", "in/" + "d" * 900])
        document = {"Records": [{"eventName": rng.choice(["ObjectCreated:Put", "ObjectRemoved:Delete",
                                                          "ObjectCreated:Copy"]),
                                 "s3": {"bucket": {"name": BUCKET}, "object": {"key": key}}}
                                for _ in range(rng.choice([1, 1, 2]))]}
        if rng.random() < 0.3:
            document["Records"][0]["s3"]["object"].update(size=rng.choice([1, 10 ** 9, -1, 0]),
                                                          eTag=rng.choice(['"abc"', "", "x"]))
    for _ in range(rng.randint(0, 3)):
        paths = list(_paths(document))
        path = rng.choice(paths)
        r = rng.random()
        if r < 0.6:
            document = _replace(document, path, junk(rng))
        elif path and r < 0.9:
            parent = document
            for part in path[:-1]:
                parent = parent[part]
            del parent[path[-1]]
        else:
            document = _replace(document, path, [junk(rng)] * rng.randint(0, 3))
    return document


def gen_event(rng: random.Random, allowed: bool = True) -> Case:
    """An Object Storage event through a direct invocation or envelopes.parse."""
    document = event_document(rng, allowed)
    data = json_bytes(rng, document)
    target = rng.choice(["direct", "direct", "decoder"])
    return Case("event", target, rng.choice(["digits", "unet"]), data,
                rng.choice(["application/json", "application/cloudevents+json", None]), decoder="event")


# -- seeds mutated, routes ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def seeds() -> tuple[Path, ...]:
    """The mutation corpus: samples, pydicom's small test files, tests/data/fuzz, the events."""
    import pydicom
    files = [ROOT / "samples" / "digit-7.png", ROOT / "samples" / "phantom.png", ROOT / "samples" / "phantom.dcm"]
    corpus = Path(pydicom.__file__).parent / "data" / "test_files"
    files += sorted(p for p in corpus.glob("*.dcm") if p.stat().st_size <= 70_000)
    files += sorted(p for p in SEEDS.glob("*") if p.is_file() and p.suffix != ".json")
    return tuple(files + sorted(EVENTS.glob("*.json")))


_SEED_CACHE: dict[Path, bytes] = {}


def gen_mutate(rng: random.Random) -> Case:
    """A real file's bytes, mutated, with its own or a random content type."""
    path = rng.choice(seeds())
    if path not in _SEED_CACHE:
        _SEED_CACHE[path] = path.read_bytes()
    data = mutate(rng, _SEED_CACHE[path], rng.choice([1, 1, 2, 4, 8]))
    kinds = {".png": "image/png", ".dcm": "application/dicom", ".json": "application/json"}
    ctype = kinds.get(path.suffix, "application/octet-stream") if rng.random() < 0.7 else rng.choice(TYPES)
    case = _image_case(rng, "mutate", data, ctype)
    if path.suffix == ".json":
        case.decoder = "event"
        case.target = rng.choice(["direct", "decoder"])
    if path.suffix == ".dcm":
        case.model = "unet"
    return case


PATHS = ["/predict", "/v2/models/digits-cnn/infer", "/v2/models/lesion-unet", "/v2/models/{m}/ready",
         "/v2/health/live", "/v2/health/ready", "/v2", "/", "", "//predict//", "/predict/../v2", "/v2/models//infer",
         "/v2/models/%2e%2e/infer", "/%ff%fe", "/v2/models/{m}/versions/1.0.0/infer", "/v2/models/{m}/versions/",
         "/\u00e9", "/predict?" + "a=" * 2000, "/imaging/predict", "/predict#frag", "http://host/predict", "/v2/models/ x"]


def gen_route(rng: random.Random) -> Case:
    """A gateway call with a random method, path, query and headers."""
    model = rng.choice(["digits", "unet"])
    path = rng.choice(PATHS).replace("{m}", MODEL_NAMES[model])
    if rng.random() < 0.3:
        path = mutate(rng, path.encode(), 1).decode("latin-1")
    if rng.random() < 0.2:
        path += "?" + rng.choice(["binary_data_output=true", "binary_data_output=%ff", "x", "=&=&", "a=1;b"])
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "", "BREW"])
    body = rng.choice([b"", b"{}", b'{"inputs": []}', rng.randbytes(rng.randint(0, 64)), encode_image(rng)[0]])
    headers = {}
    if rng.random() < 0.2:
        headers[rng.choice(["accept", "x-forwarded-for", "inference-header-content-length", "content-length"])] = \
            rng.choice(HEADER_VALUES)
    return Case("route", "gateway", model, body, rng.choice(TYPES), method, path, headers, decoder="image")


GENERATORS = {"image": gen_image, "dicom": gen_dicom, "multipart": gen_multipart, "base64": gen_base64,
              "oip": gen_oip, "oip-binary": gen_oip_binary, "event": gen_event, "mutate": gen_mutate,
              "route": gen_route}


def generate(seed: int, index: int, only: tuple[str, ...] = ()) -> Case:
    """Input `index` of the run seeded `seed`: the same (seed, index) always makes the same input."""
    rng = random.Random(f"{seed}:{index}")
    names = list(only) or list(WEIGHTS)
    name = rng.choices(names, [WEIGHTS[n] for n in names])[0]
    return GENERATORS[name](rng)


# -- running one input -------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one input got: its status and code, and if it crashed, what happened."""
    status: int
    code: str
    crash: str | None = None       # None, or a one-line description
    detail: str = ""               # traceback or answer excerpt


class Traces(logging.Handler):
    """Keeps the traceback of the last exception the app logged (its safety net logs every unexpected error)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.last = ""

    def emit(self, record):
        if record.exc_info:
            self.last = "".join(traceback.format_exception(*record.exc_info))


class Harness:
    """The apps (one per model) and the decoders, in this process, as the fdk calls them."""

    def __init__(self, events: bool, cache_dir: str, quiet: bool = True):
        from onnxfn import logs
        from onnxfn.app import App
        from onnxfn.settings import Settings
        logger = logging.getLogger("onnxfn")
        self.traces = Traces()
        if quiet:  # a worker process of the bench: no log lines, no warnings, tracebacks kept for the report
            import warnings
            warnings.simplefilter("ignore")
            logs.setup("ERROR")
            logger.handlers.clear()
            logging.getLogger().setLevel(logging.CRITICAL)   # the fdk sets the root logger to DEBUG
            for handler in logging.getLogger().handlers:
                handler.setLevel(logging.CRITICAL)
            for name in ("fn", *logs.NOISY, *logs.SILENT):  # the fdk logs escaped exceptions to "fn": counted here
                logging.getLogger(name).setLevel(logging.CRITICAL)
        logger.addHandler(self.traces)
        sources = f"s3://{BUCKET}/" if events else "s3://fuzz-never-allowed/"

        def factory(model: str):
            return lambda: Settings(model_uri=str(MODELS[model]), baked_bundle="", threads=1, log_level="ERROR",
                                    event_sources=sources, cache_dir=cache_dir)
        self.apps = {model: App(factory(model)) for model in MODELS}
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        """Stop keeping tracebacks (a test's harness, in a process that goes on)."""
        logging.getLogger("onnxfn").removeHandler(self.traces)

    def specs(self, model: str):
        """The model's inputs, as the manifest declares them."""
        return self.apps[model].service.model()[0].manifest.inputs

    def settings(self, model: str):
        """The app's settings."""
        return self.apps[model].service.settings

    def run(self, case: Case) -> Outcome:
        """Run one input; never raises."""
        self.traces.last = ""
        try:
            if case.target == "decoder":
                return self._decoder(case)
            return self._call(case)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a decoder's uncaught exception, the fdk's own failure, a Rust panic (pyo3)
            return Outcome(599, "exception", f"uncaught {type(e).__name__}: {str(e)[:200]}", traceback.format_exc())

    def _call(self, case: Case) -> Outcome:
        from fdk import constants, runner
        from fdk.fixtures import code
        from onnxfn import fn
        fn._app = self.apps[case.model]
        deadline = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 30))
        headers = {"fn-call-id": "fuzz", "fn-deadline": deadline}
        if case.content_type is not None:
            headers["content-type"] = case.content_type
        if case.target == "gateway":
            headers.update({"fn-intent": "httprequest", "fn-http-method": case.method,
                            "fn-http-request-url": case.url})
            if case.content_type is not None:
                headers["fn-http-h-content-type"] = case.content_type
            headers.update({"fn-http-h-" + k: v for k, v in case.headers.items()})
        else:
            headers.update(case.headers)
        response = self.loop.run_until_complete(runner.handle_request(
            code(fn.handler), constants.HTTPSTREAM, headers=headers, data=io.BytesIO(case.body)))
        return self._judge(case, response.status(), response.body_bytes() if hasattr(response, "body_bytes")
                           else response.body(), response.context().GetResponseHeaders())

    def _judge(self, case: Case, http: int, raw, headers: dict) -> Outcome:
        raw = raw if isinstance(raw, bytes) else str(raw).encode()
        length = next((v for k, v in (headers or {}).items()   # gateway answers carry it as Fn-Http-H-...
                       if k.lower().endswith("inference-header-content-length")), None)
        length = length[0] if isinstance(length, list) else length
        try:
            body = json.loads(raw[:int(length)] if length else raw)
        except (ValueError, TypeError):
            return Outcome(http, "not_json", f"answer {http} is not JSON", raw[:300].decode("latin-1"))
        status = body.get("status", 200) if isinstance(body, dict) and "error" in body else 200
        status = max(status, http) if case.target == "gateway" or http >= 500 else status
        code = body.get("code", "ok") if isinstance(body, dict) and "error" in body else "ok"
        if status >= 500 or code == "internal_error":
            detail = self.traces.last or json.dumps(body)[:1000]
            return Outcome(status, code, f"{status} {code}: {str(body.get('error', ''))[:200]}", detail)
        return Outcome(status, code)

    def _decoder(self, case: Case) -> Outcome:
        from onnxfn.codecs import binary, payload, tensor
        from onnxfn.errors import OnnxfnError
        from onnxfn.events import envelopes
        from onnxfn import routes
        settings = self.settings(case.model)
        try:
            if case.decoder == "image":
                body = payload.classify(case.body, case.content_type, settings.max_body_bytes)
                if body.kind != "json":
                    payload.decode_image(body, settings.max_pixels)
            elif case.decoder == "tensor":
                tensor.parse_request(routes.parse_json(case.body), self.specs(case.model))
            elif case.decoder == "binary":
                framed = binary.frame(case.body, case.headers.get(binary.HEADER, ""))
                binary.parse_request(framed, self.specs(case.model))
            else:
                for ref in envelopes.parse(routes.parse_json(case.body)):
                    (ref.bucket, ref.key, ref.etag, ref.size, ref.namespace)
        except OnnxfnError as e:
            if e.status >= 500:
                return Outcome(e.status, e.code, f"{e.status} {e.code}: {e.message[:200]}", traceback.format_exc())
            return Outcome(e.status, e.code)
        return Outcome(200, "ok")


def save(case: Case, outcome: Outcome, out: Path, name: str) -> Path:
    """The input (body + JSON of everything else) and what it got, for --replay."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.bin").write_bytes(case.body)
    meta = {k: v for k, v in asdict(case).items() if k != "body"}
    meta.update(body=f"{name}.bin", crash=outcome.crash, status=outcome.status, code=outcome.code,
                detail=outcome.detail.replace(str(ROOT) + "/", "").replace(sysconfig.get_paths()["purelib"],
                                                                           "<site-packages>"))  # no machine paths
    path = out / f"{name}.json"
    path.write_text(json.dumps(meta, indent=1))
    return path


def load(path: Path) -> Case:
    """A saved input."""
    meta = json.loads(path.read_text())
    fields = {k: meta[k] for k in ("generator", "target", "model", "content_type", "method", "url", "headers",
                                   "decoder")}
    return Case(body=(path.parent / meta["body"]).read_bytes(), **fields)


# -- workers -----------------------------------------------------------------------------------------

def _worker(wid: int, seed: int, start: int, stop: int, step: int, only, events: bool, cache_dir: str, out: str,
            state, conn, vm_limit: int = 0) -> None:
    """Run inputs start, start+step, ... < stop; send each outcome; `state[2*wid:2*wid+2]` holds the current
    input and when it started (time.monotonic), for the watcher."""
    import resource
    if vm_limit:  # a runaway input meets a MemoryError inside the call (answered, counted) before the OOM killer
        resource.setrlimit(resource.RLIMIT_AS, (vm_limit, vm_limit))
    harness = Harness(events, cache_dir)
    for model in MODELS:  # both models loaded before the first timed input
        harness.specs(model)
    conn.send(("ready", wid))
    for index in range(start, stop, step):
        state[2 * wid] = index
        state[2 * wid + 1] = time.monotonic()
        try:
            case = generate(seed, index, only)
        except Exception as e:  # the fuzzer's own bug, not the app's: reported apart
            conn.send((index, "generator-error", "none", "generator_error", type(e).__name__, 0.0, None, "", 0))
            continue
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        began = time.perf_counter()
        outcome = harness.run(case)
        ms = (time.perf_counter() - began) * 1000
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # this input raised the peak
        path = str(save(case, outcome, Path(out), f"{case.generator}-{seed}-{index}")) if outcome.crash else ""
        conn.send((index, case.generator, case.target, outcome.status, outcome.code, ms, outcome.crash, path, grew))
    state[2 * wid + 1] = 0.0
    conn.send(("done", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def _receive(conn):
    """One message from a worker, refusing a length no outcome has (a corrupted stream would allocate it)."""
    import pickle
    return pickle.loads(conn.recv_bytes(maxlength=1 << 20))


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes, (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    values = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    kb = lambda k: int(values.get(k, "0 kB").split()[0]) * 1024  # noqa: E731
    return kb("VmRSS"), kb("VmHWM")


def _start_s3():
    """A real SeaweedFS with the allowed event bucket and its objects; (server, its env) or (None, {})."""
    try:
        from tests.support.s3server import S3Server
        server = S3Server().start()
    except Exception as e:  # weed missing: events still fuzzed, none of them allowed
        print(f"SeaweedFS not started ({type(e).__name__}: {e}); no event names an allowed bucket")
        return None, {}
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    for key, path in OBJECTS.items():
        data = path.read_bytes() if path else (ROOT / "samples" / "phantom.png").read_bytes()[:3000]
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return server, server.env()


def run(count: int, seed: int, workers: int, timeout: float, max_rss: int, out: Path, only=(),
        s3: bool = True, vm_limit: int = 0) -> dict:
    """Run `count` inputs over `workers` processes; the figures."""
    server, env = _start_s3() if s3 else (None, {})
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cache = tempfile.mkdtemp(prefix="onnxfn-fuzz-cache-")
    ctx = mp.get_context("spawn")
    state = ctx.Array("d", 2 * workers, lock=False)
    by_gen = collections.Counter()
    by_target = collections.Counter()
    statuses = collections.Counter()
    codes = collections.Counter()
    crashes: list[dict] = []
    slowest = (0.0, "", -1)
    growth: list[tuple[int, str, int]] = []   # the inputs that raised a worker's peak RSS the most
    peak = 0
    procs: dict[int, tuple] = {}
    next_start: dict[int, int] = {}

    def spawn(wid: int, start: int):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(wid, seed, start, count, workers, tuple(only), server is not None,
                                              cache, str(out), state, child, vm_limit), daemon=True)
        p.start()
        child.close()
        state[2 * wid], state[2 * wid + 1] = start, 0.0
        procs[wid] = (p, parent)

    try:
        for wid in range(workers):
            spawn(wid, wid)
        ready = 0
        began = None
        done = set()
        while len(done) < workers:
            live = {procs[w][1]: w for w in procs if w not in done}
            for conn in wait(list(live), timeout=0.25):
                wid = live[conn]
                try:
                    message = _receive(conn)
                except (EOFError, OSError):
                    continue  # the process died: the check below records it
                if message[0] == "ready":
                    ready += 1
                    if ready == workers and began is None:
                        began = time.perf_counter()
                elif message[0] == "done":
                    peak = max(peak, message[1])
                    done.add(wid)
                    procs[wid][0].join()
                else:
                    index, gen, target, status, code, ms, crash, path, grew = message
                    growth.append((grew, gen, index))
                    growth[:] = sorted(growth, reverse=True)[:5]
                    by_gen[gen] += 1
                    by_target[target] += 1
                    statuses[status] += 1
                    codes[code] += 1
                    next_start[wid] = index + workers
                    if ms > slowest[0]:
                        slowest = (ms, gen, index)
                    if crash:
                        crashes.append({"index": index, "generator": gen, "target": target, "crash": crash,
                                        "saved": path})
            now = time.monotonic()
            for wid, (p, conn) in list(procs.items()):
                if wid in done:
                    continue
                rss, hwm = _rss(p.pid)
                peak = max(peak, hwm)
                index, started = int(state[2 * wid]), state[2 * wid + 1]
                why = None
                if started and now - started > timeout:
                    why = f"hang: still running after {timeout:g} s"
                elif rss > max_rss:
                    why = f"memory: RSS {rss / 2 ** 20:.0f} MB over {max_rss / 2 ** 20:.0f} MB"
                elif not p.is_alive():
                    why = f"worker died (exit code {p.exitcode})"
                if why is None:
                    continue
                if p.is_alive():
                    p.kill()
                p.join()
                finished = False
                while conn.poll():  # outcomes sent before it ended
                    try:
                        message = _receive(conn)
                    except (EOFError, OSError):
                        break
                    if message[0] == "done":
                        peak, finished = max(peak, message[1]), True
                    elif isinstance(message[0], int):
                        by_gen[message[1]] += 1
                        by_target[message[2]] += 1
                        statuses[message[3]] += 1
                        codes[message[4]] += 1
                        if message[6]:
                            crashes.append({"index": message[0], "generator": message[1], "target": message[2],
                                            "crash": message[6], "saved": message[7]})
                if finished:
                    done.add(wid)
                    continue
                case = generate(seed, index, only)
                path = save(case, Outcome(0, "killed", why), out, f"{case.generator}-{seed}-{index}")
                crashes.append({"index": index, "generator": case.generator, "target": case.target, "crash": why,
                                "saved": str(path)})
                by_gen[case.generator] += 1
                by_target[case.target] += 1
                statuses["killed"] += 1
                if index + workers < count:
                    spawn(wid, index + workers)
                else:
                    done.add(wid)
        seconds = time.perf_counter() - (began or time.perf_counter())
    finally:
        for p, _ in procs.values():
            if p.is_alive():
                p.kill()
                p.join()
        for k, v in saved_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        if server is not None:
            server.close()
    total = sum(by_gen.values())
    return {"inputs": total, "seed": seed, "workers": workers, "seconds": round(seconds, 1),
            "inputs_per_second": round(total / seconds, 1) if seconds else None,
            "by_generator": dict(sorted(by_gen.items())), "by_target": dict(sorted(by_target.items())),
            "by_status": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
            "top_codes": dict(codes.most_common(25)), "crashes": crashes,
            "five_xx": sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500),
            "hangs": sum(c["crash"].startswith("hang") for c in crashes),
            "slowest_ms": round(slowest[0], 1), "slowest_input": f"{slowest[1]} #{slowest[2]}",
            "peak_rss_mb": round(peak / 2 ** 20, 1),
            "largest_rss_jumps": [f"{g / 2 ** 20:.0f} MB {gen} #{i}" for g, gen, i in growth],
            "parent_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "timeout_s": timeout, "events_storage": server is not None}


def report(f: dict) -> None:
    """Print the figures."""
    print(f"fuzz: {f['inputs']:,} inputs (seed {f['seed']}, {f['workers']} workers) in {f['seconds']} s "
          f"({f['inputs_per_second']}/s)")
    print("  by generator: " + ", ".join(f"{k} {v:,}" for k, v in f["by_generator"].items()))
    print("  by target:    " + ", ".join(f"{k} {v:,}" for k, v in f["by_target"].items()))
    print("  by status:    " + ", ".join(f"{k} {v:,}" for k, v in f["by_status"].items()))
    print("  top codes:    " + ", ".join(f"{k} {v:,}" for k, v in f["top_codes"].items()))
    print(f"  crashes: {len(f['crashes'])}   5xx: {f['five_xx']}   hangs (> {f['timeout_s']:g} s): {f['hangs']}")
    for c in f["crashes"][:30]:
        print(f"    {c['generator']} #{c['index']} ({c['target']}): {c['crash']}  -> {c['saved']}")
    print(f"  slowest input: {f['slowest_ms']} ms ({f['slowest_input']})   peak RSS per worker: {f['peak_rss_mb']} MB")
    print(f"  inputs that raised a worker's peak RSS most: {', '.join(f['largest_rss_jumps'])}; "
          f"this process's peak RSS: {f['parent_peak_rss_mb']} MB")
    print(f"  events against SeaweedFS: {'yes' if f['events_storage'] else 'no'}")


def replay(path: Path) -> dict:
    """Run one saved input in this process and print what it got."""
    case = load(path)
    harness = Harness(events=False, cache_dir=tempfile.mkdtemp(prefix="onnxfn-fuzz-cache-"))
    outcome = harness.run(case)
    print(f"{path.name}: {case.generator} via {case.target} ({case.model}): {outcome.status} {outcome.code}")
    if outcome.crash:
        print(outcome.crash)
        print(outcome.detail)
    return asdict(outcome)


def main(argv: list[str] | None = None) -> dict:
    """Run the fuzzer with `argv` (the command line's when None), print its figures and return them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take before it is a hang")
    parser.add_argument("--max-rss-mb", type=int, default=2048, help="a worker past this RSS is a crash")
    parser.add_argument("--worker-vm-gb", type=float, default=6.0,
                        help="each worker's address-space limit (RLIMIT_AS): a runaway input gets a MemoryError")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "onnxfn-fuzz",
                        help="where crashing inputs are saved")
    parser.add_argument("--only", default="", help="comma-separated generators (default: all)")
    parser.add_argument("--no-s3", action="store_true", help="no SeaweedFS: no event names an allowed bucket")
    parser.add_argument("--replay", type=Path, help="run one saved input (its .json) and print the traceback")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    only = tuple(n for n in args.only.split(",") if n)
    figures = run(args.count, args.seed, args.workers, args.timeout, args.max_rss_mb * 2 ** 20, args.out, only,
                  not args.no_s3, int(args.worker_vm_gb * 2 ** 30))
    figures["command"] = "python bench/reliability/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report(figures)
    return figures


if __name__ == "__main__":
    main()
