"""Request bodies -> what the core works on: an `Image`, or an OIP JSON document.

Accepted: raw image bytes (PNG, JPEG, TIFF, BMP, DICOM) by content type, or sniffed by
their magic bytes when the type is missing or application/octet-stream;
multipart/form-data with one file part; JSON {"image": "<base64>"}; OIP JSON tensors.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from onnxfn.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/pjpeg": "jpeg",
               "image/tiff": "tiff", "image/tif": "tiff", "image/bmp": "bmp", "image/x-ms-bmp": "bmp",
               "image/x-bmp": "bmp", "application/dicom": "dicom", "image/dicom": "dicom"}
JSON_TYPES = ("application/json", "text/json")
SNIFFED = ("", "application/octet-stream", "binary/octet-stream")
ACCEPTED = ("image/png, image/jpeg, image/tiff, image/bmp, application/dicom, multipart/form-data "
            "with one file, application/json ({\"image\": base64} or OIP tensors)")


@dataclass
class Body:
    """A body whose kind is known: `kind` is an image format, or "json" with `document` parsed."""
    kind: str
    data: bytes
    document: Any = None


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """`image/png; charset=x` -> ("image/png", {"charset": "x"})."""
    if not content_type:
        return "", {}
    head, *params = content_type.split(";")
    parsed = {}
    for p in params:
        key, _, value = p.strip().partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"')
    return head.strip().lower(), parsed


def sniff(data: bytes) -> str | None:
    """The format the bytes' signature shows (dicom, png, jpeg, tiff, bmp; json for a body starting with
    { or [), or None."""
    if data[128:132] == b"DICM":  # first: a DICOM preamble may itself look like TIFF (dual-personality files)
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"BM") and len(data) > 26:
        return "bmp"
    if data.lstrip()[:1] in (b"{", b"["):
        return "json"
    return None


def check_size(body: bytes, max_bytes: int) -> None:
    """The one body limit (ONNXFN_MAX_BODY_BYTES) of every route: a 413 above it, checked before any parsing."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"the body is {len(body):,} bytes, over the limit of {max_bytes:,} "
                              "(ONNXFN_MAX_BODY_BYTES)", code="body_too_large")


def classify(data: bytes, content_type: str | None, max_bytes: int, nested: bool = False) -> Body:
    """Size-check a body and find out what it holds, without decoding pixels."""
    if not data:
        raise BadRequest("the request body is empty: send an image (PNG, JPEG, TIFF, BMP or DICOM) "
                         "or an inference request", code="empty_body")
    check_size(data, max_bytes)
    kind, params = media_type(content_type)
    if kind == "multipart/form-data" and not nested:
        part_type, part = _file_part(data, params.get("boundary"))
        return classify(part, part_type, max_bytes, nested=True)
    if kind in JSON_TYPES or kind.endswith("+json") or (kind in SNIFFED and sniff(data) == "json"):
        return _json(data, max_bytes, nested)
    if kind in IMAGE_TYPES:
        declared = IMAGE_TYPES[kind]
        found = sniff(data)
        # the bytes decide when they are clearly another supported image format
        return Body(found if found not in (None, "json") else declared, data)
    if kind in SNIFFED:
        found = sniff(data)
        if found is None:
            raise UnsupportedMediaType("the body is not a recognisable image (no PNG, JPEG, TIFF, BMP or DICOM "
                                       f"signature); send one of: {ACCEPTED}", code="unrecognised_body")
        return Body(found, data)
    raise UnsupportedMediaType(f"content type {kind!r} is not supported; send one of: {ACCEPTED}",
                               code="unsupported_content_type")


def _json(data: bytes, max_bytes: int, nested: bool) -> Body:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("the body's JSON nests too deeply", code="invalid_json") from None
    if isinstance(document, dict) and "image" in document and "inputs" not in document:
        encoded = document["image"]
        if not isinstance(encoded, str):
            raise BadRequest("`image` must be a base64 string", code="invalid_json")
        if "," in encoded[:100] and encoded.startswith("data:"):
            header, encoded = encoded.split(",", 1)
            document.setdefault("content_type", header[5:].split(";")[0])
        try:
            raw = base64.b64decode("".join(encoded.split()), validate=True)  # line-wrapped base64 is fine
        except (binascii.Error, ValueError):
            raise BadRequest("`image` is not valid base64", code="invalid_base64") from None
        if nested:
            raise BadRequest("a JSON image inside multipart is not supported", code="invalid_request")
        ctype = document.get("content_type")
        return classify(raw, ctype if isinstance(ctype, str) else None, max_bytes, nested=True)
    return Body("json", data, document)


def _file_part(data: bytes, boundary: str | None) -> tuple[str | None, bytes]:
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary parameter", code="invalid_multipart")
    try:
        delimiter = b"--" + boundary.encode("latin-1")
    except UnicodeEncodeError:
        raise BadRequest(f"the multipart boundary {boundary!r} is not plain text", code="invalid_multipart") from None
    chunks = data.split(delimiter)
    if len(chunks) < 3:
        raise BadRequest("the multipart body has no parts (boundary not found)", code="invalid_multipart")
    files = []
    for chunk in chunks[1:-1]:
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest("a multipart part has no header/body separator", code="invalid_multipart")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        _, disposition = media_type(headers.get("content-disposition"))
        if "filename" in disposition or "filename*" in disposition or \
                media_type(headers.get("content-type", "text/plain"))[0] != "text/plain":
            files.append((headers.get("content-type"), content))
    if not chunks[-1].startswith(b"--"):
        raise BadRequest("the multipart body is truncated (no closing boundary)", code="invalid_multipart")
    if len(files) != 1:
        raise BadRequest(f"multipart/form-data must carry exactly one file part, found {len(files)}",
                         code="invalid_multipart")
    return files[0]


def preload(body: Body) -> None:
    """Import what decoding `body` needs (pydicom, or Pillow and the format's plugin) before its pixels can be
    decoded: a cold call does this while the model loads, whose session is built without holding the GIL."""
    if body.kind == "dicom":
        from onnxfn.codecs import dicom
        dicom.preload()
    elif body.kind != "json":
        from onnxfn.codecs import image
        image.preload(body.kind)


def decode_image(body: Body, max_pixels: int, admit=None):
    """Decode an image body into an `Image`; `admit` (`image.Admit`) sees its header before the pixels are
    decoded and may refuse it."""
    if body.kind == "dicom":
        from onnxfn.codecs import dicom
        return dicom.decode(body.data, max_pixels, admit)
    from onnxfn.codecs import image
    return image.decode(body.data, body.kind, max_pixels, admit)


def decode_frames(body: Body, max_pixels: int, admit=None) -> list:
    """Every frame of an image body as `Image`s in the file's order (`dicom.decode_frames`: each frame with its own
    rescale, window and position; frames x pixels checked against `max_pixels`); any other image is one frame.
    For a bundle whose manifest says how frames are served (`frames`); `decode_image` refuses multi-frame files."""
    if body.kind == "dicom":
        from onnxfn.codecs import dicom
        return dicom.decode_frames(body.data, max_pixels, admit)
    return [decode_image(body, max_pixels, admit)]
