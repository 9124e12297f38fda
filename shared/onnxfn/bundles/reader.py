"""Reading one JSON object of a manifest, every error naming the field at fault (`inputs[0].image.mean`)."""
from __future__ import annotations

import math
from typing import Any

from onnxfn.errors import BundleError


class Reader:
    """Reads one JSON object, naming `where` in every error."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise BundleError(f"manifest field {where or 'root'} must be an object, got {type(data).__name__}",
                              code="invalid_manifest")
        self.data, self.where = data, where

    def path(self, key: str) -> str:
        """The full name of field `key` of this object (`inputs[0].image.mean`)."""
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, message: str) -> BundleError:
        """The error for field `key`: "manifest field <path> <message>"."""
        return BundleError(f"manifest field {self.path(key)} {message}", code="invalid_manifest")

    def get(self, key: str, kind: type | tuple, default: Any = ..., choices: tuple | None = None):
        """Field `key`, of type `kind` (an int is taken as a float), finite, among `choices` if given; `default`
        when it is missing or null (no default: it is required)."""
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be {names}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, "must be a finite number")
        if choices is not None and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value

    def numbers(self, key: str, default: Any = None, length: int | None = None) -> tuple[float, ...] | None:
        """Field `key` as a non-empty tuple of finite numbers (of `length`, if given), or `default`."""
        values = self.get(key, list, default)
        if values is default:
            return default
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                 for v in values):
            raise self.fail(key, "must be a non-empty list of finite numbers")
        if length is not None and len(values) != length:
            raise self.fail(key, f"must hold {length} numbers, got {len(values)}")
        return tuple(float(v) for v in values)

    def items(self, key: str) -> list["Reader"]:
        """Field `key`, a non-empty list of objects, each as a `Reader` naming its index."""
        values = self.get(key, list)
        if not values:
            raise self.fail(key, "must be a non-empty list")
        return [Reader(v, f"{self.path(key)}[{i}]") for i, v in enumerate(values)]
