"""payload.py: what a request body holds, by content type or by its bytes, before any
pixel is decoded; multipart with one file; JSON with a base64 image; size limits."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.support.images import encode, png, pydicom_file
from onnxfn.codecs import payload
from onnxfn.errors import BadRequest, OnnxfnError, PayloadTooLarge, UnsupportedMediaType

MAX = 1_000_000
PNG = png(np.arange(12, dtype=np.uint8).reshape(3, 4))
JPEG = encode(np.zeros((8, 8, 3), np.uint8), "JPEG")
TIFF = encode(np.zeros((3, 3), np.uint8), "TIFF")
BMP = encode(np.zeros((3, 3, 3), np.uint8), "BMP")
DICOM = pydicom_file("CT_small.dcm").read_bytes()
MR = pydicom_file("MR_small.dcm").read_bytes()
OIP = json.dumps({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode()


def rejected(data: bytes, content_type: str | None, error=BadRequest, max_bytes: int = MAX) -> OnnxfnError:
    with pytest.raises(error) as info:
        payload.classify(data, content_type, max_bytes)
    return info.value


# ------------------------------------------------------------------ media types and sniffing

def test_media_type_splits_parameters():
    assert payload.media_type('Multipart/Form-Data; Boundary="a b"; charset=utf-8') == \
        ("multipart/form-data", {"boundary": "a b", "charset": "utf-8"})
    assert payload.media_type(None) == ("", {})
    assert payload.media_type("") == ("", {})
    assert payload.media_type("image/png") == ("image/png", {})


@pytest.mark.parametrize("data,kind", [(PNG, "png"), (JPEG, "jpeg"), (TIFF, "tiff"), (BMP, "bmp"), (MR, "dicom"),
                                       (b"  {\"a\": 1}", "json"), (b"[1]", "json"), (b"hello", None),
                                       (b"BM", None), (b"", None)])
def test_sniff(data, kind):
    assert payload.sniff(data) == kind


def test_sniff_puts_dicom_before_a_tiff_preamble():
    assert DICOM[:4] == b"II*\x00"  # CT_small's preamble is a TIFF header: a dual-personality file
    assert payload.sniff(DICOM) == "dicom"


@pytest.mark.parametrize("content_type,data,kind", [
    ("image/png", PNG, "png"), ("image/jpeg", JPEG, "jpeg"), ("image/jpg", JPEG, "jpeg"),
    ("image/pjpeg", JPEG, "jpeg"), ("image/tiff", TIFF, "tiff"), ("image/tif", TIFF, "tiff"),
    ("image/bmp", BMP, "bmp"), ("image/x-ms-bmp", BMP, "bmp"), ("image/x-bmp", BMP, "bmp"),
    ("application/dicom", MR, "dicom"), ("image/dicom", MR, "dicom"), ("IMAGE/PNG; q=1", PNG, "png"),
])
def test_image_content_types(content_type, data, kind):
    body = payload.classify(data, content_type, MAX)
    assert (body.kind, body.data, body.document) == (kind, data, None)


@pytest.mark.parametrize("content_type", [None, "", "application/octet-stream", "binary/octet-stream"])
@pytest.mark.parametrize("data,kind", [(PNG, "png"), (JPEG, "jpeg"), (TIFF, "tiff"), (BMP, "bmp"), (DICOM, "dicom")])
def test_missing_or_generic_types_are_sniffed(content_type, data, kind):
    assert payload.classify(data, content_type, MAX).kind == kind


def test_bytes_win_over_a_wrong_image_type():
    assert payload.classify(PNG, "image/jpeg", MAX).kind == "png"
    assert payload.classify(DICOM, "image/tiff", MAX).kind == "dicom"


def test_declared_type_stands_when_the_bytes_say_nothing():
    # not recognisable: the decoder for the declared type gets to say what is wrong
    assert payload.classify(b"garbage", "image/png", MAX).kind == "png"
    assert payload.classify(b"{}", "image/png", MAX).kind == "png"


def test_unrecognisable_bytes_without_a_type_are_415():
    error = rejected(b"\x00\x01garbage", "application/octet-stream", UnsupportedMediaType)
    assert (error.status, error.code) == (415, "unrecognised_body")
    assert "signature" in error.message and "image/png" in error.message


@pytest.mark.parametrize("content_type", ["text/plain", "image/gif", "image/webp", "application/xml"])
def test_unsupported_content_type_is_415_and_named(content_type):
    error = rejected(PNG, content_type, UnsupportedMediaType)
    assert (error.status, error.code) == (415, "unsupported_content_type")
    assert repr(content_type) in error.message and "image/png" in error.message


def test_empty_body_is_400():
    error = rejected(b"", "image/png")
    assert (error.status, error.code) == (400, "empty_body")


def test_body_over_the_limit_is_413():
    assert payload.classify(PNG, "image/png", len(PNG)).kind == "png"
    error = rejected(PNG, "image/png", PayloadTooLarge, max_bytes=len(PNG) - 1)
    assert (error.status, error.code) == (413, "body_too_large")
    assert f"{len(PNG):,} bytes" in error.message and "ONNXFN_MAX_BODY_BYTES" in error.message


# ------------------------------------------------------------------ JSON

@pytest.mark.parametrize("content_type", ["application/json", "text/json", "application/vnd.x+json",
                                          "application/json; charset=utf-8", None, "application/octet-stream"])
def test_json_document(content_type):
    body = payload.classify(OIP, content_type, MAX)
    assert body.kind == "json" and body.document["inputs"][0]["name"] == "a"


@pytest.mark.parametrize("data", [b"{", b'{"a": }', b"\xff\xfe{", b"[1, 2"])
def test_malformed_json_is_400(data):
    error = rejected(data, "application/json")
    assert (error.status, error.code) == (400, "invalid_json")
    assert "not valid JSON" in error.message


def test_json_nested_too_deep_is_400_not_a_crash():
    error = rejected(b"[" * 100_000, "application/json")
    assert (error.status, error.code) == (400, "invalid_json")
    assert "nests too deeply" in error.message


def image_json(value, **extra) -> bytes:
    return json.dumps({"image": value, **extra}).encode()


def test_base64_image_in_json():
    body = payload.classify(image_json(base64.b64encode(PNG).decode()), "application/json", MAX)
    assert (body.kind, body.data) == ("png", PNG)


def test_base64_dicom_in_json_is_sniffed():
    body = payload.classify(image_json(base64.b64encode(MR).decode()), "application/json", MAX)
    assert (body.kind, body.data) == ("dicom", MR)


def test_line_wrapped_base64_is_accepted():
    wrapped = base64.encodebytes(PNG).decode()  # 76-column lines, like the base64 command
    assert "\n" in wrapped
    assert payload.classify(image_json(wrapped), "application/json", MAX).data == PNG


def test_data_url_gives_its_content_type():
    url = "data:image/dicom;base64," + base64.b64encode(MR).decode()
    assert payload.classify(image_json(url), "application/json", MAX).kind == "dicom"
    # the declared type applies when the bytes are not recognisable
    url = "data:image/tiff;base64," + base64.b64encode(b"plain bytes").decode()
    assert payload.classify(image_json(url), "application/json", MAX).kind == "tiff"


def test_explicit_content_type_field_applies():
    body = payload.classify(image_json(base64.b64encode(b"plain bytes").decode(), content_type="image/bmp"),
                            "application/json", MAX)
    assert body.kind == "bmp"


@pytest.mark.parametrize("value", ["not base64!", "iVBORw0KGgo", "data:image/png;base64,@@@@"])
def test_bad_base64_is_400(value):
    error = rejected(image_json(value), "application/json")
    assert (error.status, error.code) == (400, "invalid_base64")
    assert "`image`" in error.message


@pytest.mark.parametrize("value", [123, None, ["x"], {"data": "x"}])
def test_image_that_is_not_a_string_is_400(value):
    error = rejected(image_json(value), "application/json")
    assert (error.status, error.code) == (400, "invalid_json")
    assert "base64 string" in error.message


def test_empty_base64_image_is_an_empty_body():
    assert rejected(image_json(""), "application/json").code == "empty_body"


def test_a_request_with_inputs_is_oip_even_with_an_image_key():
    document = {"image": "x", "inputs": []}
    body = payload.classify(json.dumps(document).encode(), "application/json", MAX)
    assert body.kind == "json" and body.document == document


# ------------------------------------------------------------------ multipart

BOUNDARY = "----onnxfnBoundary7MA4YWxkTrZu0gW"


def multipart(*parts: tuple[list[str], bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    out = b"preamble ignored\r\n"
    for headers, content in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        out += "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + content + b"\r\n"
    return out + (b"--" + boundary.encode() + b"--\r\n" if close else b"")


def file_part(content: bytes, content_type: str | None = "image/png", name: str = "image.png"):
    headers = [f'Content-Disposition: form-data; name="file"; filename="{name}"']
    if content_type:
        headers.append(f"Content-Type: {content_type}")
    return headers, content


def field(name: str, value: bytes, content_type: str | None = None):
    headers = [f'Content-Disposition: form-data; name="{name}"']
    if content_type:
        headers.append(f"Content-Type: {content_type}")
    return headers, value


CT = f'multipart/form-data; boundary="{BOUNDARY}"'


def test_multipart_with_one_file():
    body = payload.classify(multipart(file_part(PNG)), CT, MAX)
    assert (body.kind, body.data) == ("png", PNG)


def test_multipart_keeps_content_with_crlf_and_dashes_inside():
    content = PNG + b"\r\n--not the boundary\r\n\r\n"
    assert payload.classify(multipart(file_part(content)), CT, MAX).data == content


def test_multipart_file_without_a_type_is_sniffed():
    body = payload.classify(multipart(file_part(MR, content_type=None, name="scan.dcm")), CT, MAX)
    assert body.kind == "dicom" and body.data == MR


def test_multipart_octet_stream_file_is_sniffed():
    assert payload.classify(multipart(file_part(JPEG, "application/octet-stream")), CT, MAX).kind == "jpeg"


@pytest.mark.parametrize("text", [field("note", b"left knee"),
                                  field("note", b"left knee", "text/plain; charset=utf-8"),
                                  field("filename", b"scan.png")])
def test_multipart_text_fields_beside_the_file_are_ignored(text):
    body = payload.classify(multipart(text, file_part(PNG), field("patient_hint", b"none")), CT, MAX)
    assert (body.kind, body.data) == ("png", PNG)


def test_multipart_with_a_json_part_reads_the_document():
    body = payload.classify(multipart(field("request", OIP, "application/json")), CT, MAX)
    assert body.kind == "json" and body.document["inputs"][0]["datatype"] == "FP32"


def test_multipart_refuses_a_base64_json_image_inside():
    part = field("request", image_json(base64.b64encode(PNG).decode()), "application/json")
    assert rejected(multipart(part), CT).code == "invalid_request"


@pytest.mark.parametrize("parts,found", [((), 0), ((field("note", b"x"),), 0),
                                         ((file_part(PNG), file_part(JPEG, "image/jpeg", "b.jpg")), 2)])
def test_multipart_needs_exactly_one_file(parts, found):
    data = multipart(*parts) if parts else b"--" + BOUNDARY.encode() + b"\r\n\r\n\r\n--" + BOUNDARY.encode() + b"--"
    error = rejected(data, CT)
    assert (error.status, error.code) == (400, "invalid_multipart")
    if found or parts:
        assert f"found {found}" in error.message


def test_multipart_without_boundary_is_400():
    error = rejected(multipart(file_part(PNG)), "multipart/form-data")
    assert (error.status, error.code) == (400, "invalid_multipart")
    assert "boundary" in error.message


def test_multipart_whose_boundary_is_absent_is_400():
    error = rejected(multipart(file_part(PNG)), "multipart/form-data; boundary=other")
    assert error.code == "invalid_multipart" and "boundary not found" in error.message


def test_multipart_with_a_non_latin1_boundary_is_400():
    assert rejected(multipart(file_part(PNG)), "multipart/form-data; boundary=€").code == "invalid_multipart"


def test_truncated_multipart_is_400():
    data = multipart(file_part(PNG), field("note", b"x"), close=False)
    error = rejected(data, CT)
    assert error.code == "invalid_multipart" and "truncated" in error.message
    cut = multipart(file_part(PNG))[:-(len(BOUNDARY) + 6)]
    assert rejected(cut, CT).code == "invalid_multipart"


def test_multipart_part_without_blank_line_is_400():
    data = b"--" + BOUNDARY.encode() + b"\r\nContent-Type: image/png\r\n" + PNG + b"\r\n--" + BOUNDARY.encode() + b"--"
    error = rejected(data, CT)
    assert error.code == "invalid_multipart" and "separator" in error.message


def test_multipart_empty_file_is_an_empty_body():
    assert rejected(multipart(file_part(b"")), CT).code == "empty_body"


def test_multipart_is_held_to_the_byte_limit():
    data = multipart(file_part(PNG))
    error = rejected(data, CT, PayloadTooLarge, max_bytes=len(data) - 1)
    assert error.code == "body_too_large"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), boundary=st.text(min_size=1, max_size=12),
       prefix=st.sampled_from([b"", b"--B\r\n", b"--B\r\nContent-Type: image/png\r\n\r\n"]),
       suffix=st.sampled_from([b"", b"\r\n--B--", b"\r\n--B\r\n\r\nx\r\n--B--"]))
def test_multipart_parsing_only_raises_onnxfn_errors(data, boundary, prefix, suffix):
    for content_type in (f"multipart/form-data; boundary={boundary}", "multipart/form-data; boundary=B"):
        try:
            body = payload.classify(prefix + data + suffix, content_type, MAX)
        except OnnxfnError as e:
            assert e.status in (400, 413, 415)
        else:
            assert body.kind in ("png", "jpeg", "tiff", "bmp", "dicom", "json")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=300),
       content_type=st.sampled_from([None, "application/octet-stream", "application/json", "image/png",
                                     "text/plain", "multipart/form-data; boundary=x"]))
def test_any_bytes_classify_or_raise_onnxfn_errors(data, content_type):
    try:
        body = payload.classify(data, content_type, MAX)
    except OnnxfnError as e:
        assert e.status in (400, 413, 415)
    else:
        assert body.kind in ("png", "jpeg", "tiff", "bmp", "dicom", "json")


# ------------------------------------------------------------------ decode_image

def test_decode_image_dispatches_by_kind():
    image = payload.decode_image(payload.Body("png", PNG), 1000)
    assert image.format == "png" and image.pixels.shape == (3, 4)
    dicom = payload.decode_image(payload.Body("dicom", MR), 10_000)
    assert dicom.format == "dicom" and dicom.pixels.shape == (64, 64)


PRELOAD = r"""
import json, sys
from onnxfn.codecs import payload
before = set(sys.modules)
payload.preload(payload.Body(sys.argv[1], b""))
print(json.dumps(sorted(set(sys.modules) - before)))
"""


@pytest.mark.parametrize("kind, needed, not_needed", [
    ("png", ["PIL.Image", "PIL.PngImagePlugin"], ["pydicom", "PIL.TiffImagePlugin"]),
    ("tiff", ["PIL.TiffImagePlugin"], ["pydicom"]),
    ("dicom", ["pydicom"], ["pylibjpeg", "openjpeg", "libjpeg", "rle"]),  # plugins wait for a compressed file
])
def test_preload_imports_what_decoding_the_body_needs_and_nothing_else(kind, needed, not_needed):
    import subprocess
    import sys
    from tests.support.models import ROOT
    out = subprocess.run([sys.executable, "-c", PRELOAD, kind], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "shared")})
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout)
    assert all(m in loaded for m in needed) and not [m for m in loaded if m.split(".")[0] in not_needed
                                                      or m in not_needed]
