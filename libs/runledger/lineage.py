"""Ids of the nodes of the lineage graph: the one definition every producer and reader uses.

A LineageLinked event names both ends of its edge by (kind, id). The SDK builds these ids
when it logs, the API parses them when it adds node details, so both go through here:

- run: the run id, as is.
- dataset: `name@version` when the dataset has a version, else `name@<digest12>`, the
  first 12 hex digits of its digest with any `algorithm:` prefix dropped
  (`sha256:9f86d081884c7d65...` gives `9f86d081884c`). Logging the same version again with
  another digest names the same node: the version is what people refer to.
- model: `name@<version>` for a registered model version (`resnet@3`); a model a run
  produced without registering a version is `name@run:<run_id>` (MLflow's `runs:/` model).

The name is everything before the last '@' (names may contain '@', versions may not).
"""

from __future__ import annotations

import re
from typing import Final, Literal

NodeKind = Literal["dataset", "run", "model"]

MAX_NAME_LENGTH: Final = 500
MAX_VERSION_LENGTH: Final = 200
DIGEST_PREFIX_LENGTH: Final = 12
MAX_MODEL_VERSION: Final = 2**31 - 1  # model_versions.version is a Postgres integer

_DIGEST_RE = re.compile(r"^(?:[A-Za-z0-9_+.-]+:)?([0-9A-Fa-f]{12,})\Z")
_MODEL_VERSION_RE = re.compile(r"^(?P<name>.+)@(?P<version>[1-9][0-9]*)\Z")
_MODEL_RUN_RE = re.compile(r"^(?P<name>.+)@run:(?P<run_id>[A-Za-z0-9_\-.]{1,64})\Z")


def check_name(name: object, what: str = "name") -> str:
    """`name` if it is a usable dataset or model name; ValueError otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty str")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} must be at most {MAX_NAME_LENGTH} characters")
    if "\x00" in name:
        raise ValueError(f"{what} must not contain NUL")
    return name


def check_version(version: object) -> str:
    """A dataset version as text; ValueError when empty, too long, or containing '@'."""
    text = str(version)
    if not text.strip() or len(text) > MAX_VERSION_LENGTH:
        raise ValueError(f"dataset version must be 1..{MAX_VERSION_LENGTH} characters")
    if "@" in text or "\x00" in text:
        raise ValueError(f"dataset version {text!r} must not contain '@' or NUL")
    return text


def digest_hex(digest: str) -> str:
    """The hex digits of a digest (`sha256:ab..` or bare `ab..`), lower case; ValueError if not hex."""
    match = _DIGEST_RE.match(digest.strip())
    if match is None:
        raise ValueError(
            f"digest {digest!r} must be hex digits (at least {DIGEST_PREFIX_LENGTH}),"
            " optionally prefixed with 'algorithm:'"
        )
    return match.group(1).lower()


def dataset_id(name: str, version: str | None = None, digest: str | None = None) -> str:
    """The graph id of a dataset: `name@version`, else `name@<first 12 hex digits of digest>`."""
    check_name(name, "dataset name")
    if version is not None and str(version) != "":
        return f"{name}@{check_version(version)}"
    if digest:
        return f"{name}@{digest_hex(digest)[:DIGEST_PREFIX_LENGTH]}"
    raise ValueError(f"dataset {name!r} needs a version or a digest to be identified")


def model_id(name: str, version: int | None = None, *, run_id: str | None = None) -> str:
    """The graph id of a model: `name@version` when registered, else `name@run:<run_id>`."""
    check_name(name, "model name")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_MODEL_VERSION:
            raise ValueError(f"model version must be an int in 1..{MAX_MODEL_VERSION}, not {version!r}")
        return f"{name}@{version}"
    if not run_id:
        raise ValueError(f"model {name!r} needs a version, or the run that produced it")
    return f"{name}@run:{run_id}"


def dataset_name(node_id: str) -> str:
    """The dataset name inside a dataset id (everything before the last '@')."""
    return node_id.rsplit("@", 1)[0]


def parse_model_id(node_id: str) -> tuple[str, int | None, str | None]:
    """(name, version, run_id) of a model id; ValueError when it is not one."""
    match = _MODEL_VERSION_RE.match(node_id)
    if match is not None:
        return match["name"], int(match["version"]), None
    match = _MODEL_RUN_RE.match(node_id)
    if match is not None:
        return match["name"], None, match["run_id"]
    raise ValueError(f"{node_id!r} is not a model id (name@version or name@run:<run_id>)")
