"""Artifact paths, media types and HTTP byte ranges."""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass

from services.api.errors import InvalidParameter

MAX_PATH_CHARS = 1024  # run.artifact_logged's limit
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)\Z")


def artifact_path(path: str, *, allow_empty: bool = False) -> str:
    """A run-relative artifact path, validated: '/'-separated, no '..' or '.', not absolute (400)."""
    if not path:
        if allow_empty:
            return ""
        raise InvalidParameter("the artifact path is empty")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidParameter(f"the artifact path is longer than {MAX_PATH_CHARS} characters")
    if path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise InvalidParameter(f"artifact paths are relative to the run, '/'-separated: {path!r}")
    if "\x00" in path:
        raise InvalidParameter("the artifact path contains a NUL character")
    parts = path.split("/")
    if any(part in ("..", ".") for part in parts):
        raise InvalidParameter(f"'..' and '.' are not allowed in artifact paths: {path!r}")
    if any(not part for part in parts[:-1]) or (not parts[-1] and not allow_empty):
        raise InvalidParameter(f"empty segment in artifact path {path!r}")
    return path.rstrip("/")


def directory_path(path: str | None) -> str:
    """A directory to list ('' = the run's root), validated like artifact paths."""
    return artifact_path((path or "").strip("/"), allow_empty=True)


def media_type_for(path: str) -> str:
    """The media type guessed from the path's extension (application/octet-stream when unknown)."""
    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or "application/octet-stream"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A satisfiable byte range of a blob of `total` bytes: [offset, offset+length)."""

    offset: int
    length: int
    total: int

    @property
    def content_range(self) -> str:
        return f"bytes {self.offset}-{self.offset + self.length - 1}/{self.total}"


class RangeNotSatisfiable(Exception):
    """A Range header no byte of the blob satisfies (416)."""


def parse_range(header: str | None, total: int) -> ByteRange | None:
    """The single range of a `Range: bytes=a-b` header; None for none (or one this server ignores,
    e.g. several ranges: the whole blob is then sent, as RFC 9110 allows)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = min(int(last), total)
        if length == 0:
            raise RangeNotSatisfiable
        return ByteRange(total - length, length, total)
    start = int(first)
    if start >= total:
        raise RangeNotSatisfiable
    end = min(int(last), total - 1) if last else total - 1
    if end < start:
        return None
    return ByteRange(start, end - start + 1, total)
