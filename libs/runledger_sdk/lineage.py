"""Lineage: the datasets a run reads and writes, the models it produces, the runs it derives from.

    train = rl.Dataset("imagenet", version="2012", source="s3://bucket/imagenet")
    run.log_input(train)                          # InputsLogged + LineageLinked(dataset -> run, "input")
    run.log_input("labels", source="data/labels.csv")   # digest computed from the local file
    run.log_output("predictions", digest="sha256:...")  # LineageLinked(run -> dataset, "output")
    run.log_model("resnet", version=3)            # ModelVersionRegistered + LineageLinked(run -> model)
    run.derived_from(base_run_id, relation="fine_tuned_from")  # LineageLinked(base run -> run)

Every call is events on the run's partition, like the rest of what the run logs; the
API serves the graph at `GET /api/v1/lineage/{kind}/{id}`. Node ids (`name@version`,
`name@<digest12>`, `model@3`, ...) are defined once, in `runledger.lineage`.

A dataset is identified by its version, or else by its digest. A local file or directory
given as `source` without a digest is hashed here (sha256, streamed, at most
`max_digest_bytes`); any other source needs `version=` or `digest=`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from runledger.events.models import (
    DatasetInput,
    EventType,
    InputsLoggedPayload,
    LineageLinkedPayload,
    ModelVersionRegisteredPayload,
)
from runledger.lineage import check_name, check_version, dataset_id, digest_hex, model_id
from runledger_sdk.validation import check_key, tag_value

MAX_DIGEST_BYTES: Final = 2 * 1024**3
DEFAULT_CONTEXT: Final = "training"
# The input tags MLflow uses, so an MLflow-style reader finds context and version.
CONTEXT_TAG: Final = "mlflow.data.context"
VERSION_TAG: Final = "version"

_CHUNK = 1 << 20
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_\-.]{1,64}\Z")
_RELATION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}\Z")

Event = tuple[EventType, dict[str, Any]]


class DigestTooLarge(ValueError):
    """A local dataset is larger than the SDK hashes on its own: pass `digest=` instead."""


@dataclass(frozen=True, slots=True)
class Dataset:
    """A dataset as lineage sees it: a name plus a version and/or a digest, and where it lives.

    `id` is its node id in the lineage graph (`runledger.lineage.dataset_id`).
    """

    name: str
    version: str | None = None
    digest: str | None = None
    source: str = ""
    source_type: str = ""

    @property
    def id(self) -> str:
        """`name@version`, else `name@<first 12 hex digits of the digest>`."""
        return dataset_id(self.name, self.version, self.digest)


# --- digests -------------------------------------------------------------------------------------


def _feed(hasher: Any, path: Path, budget: list[int], limit: int) -> None:
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb") as f:
        while n := f.readinto(buffer):
            budget[0] += n
            if budget[0] > limit:
                raise DigestTooLarge(f"{path} grew past the {limit}-byte digest limit while being hashed")
            hasher.update(view[:n])


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    for directory, dirs, names in os.walk(root):  # symlinked directories are not followed
        dirs.sort()
        for name in names:
            path = Path(directory, name)
            if path.is_file():
                yield path.relative_to(root).as_posix(), path


def compute_digest(path: str | os.PathLike[str], max_bytes: int = MAX_DIGEST_BYTES) -> str:
    """`sha256:<hex>` of a local file or directory, read in 1 MiB chunks.

    A file: the sha256 of its bytes (what `sha256sum` prints). A directory: the sha256 over
    its regular files sorted by relative POSIX path, each entry being the path's length
    (8 bytes, big-endian), the path (UTF-8) and the sha256 of the file's bytes; empty
    directories and symlinked directories do not count. More than `max_bytes` in all
    raises DigestTooLarge before anything is read.
    """
    root = Path(path)
    budget = [0]
    if root.is_file():
        files = [("", root)]
    elif root.is_dir():
        files = sorted(_files(root))
    else:
        raise ValueError(f"{root} is not a file or a directory")
    total = sum(p.stat().st_size for _, p in files)
    if total > max_bytes:
        raise DigestTooLarge(
            f"{root} holds {total} bytes, more than the SDK hashes itself ({max_bytes});"
            " pass digest= (e.g. from your data catalog), or a larger max_digest_bytes"
        )
    if len(files) == 1 and files[0][0] == "":
        hasher = hashlib.sha256()
        _feed(hasher, root, budget, max_bytes)
        return "sha256:" + hasher.hexdigest()
    outer = hashlib.sha256()
    for rel, file in files:
        inner = hashlib.sha256()
        _feed(inner, file, budget, max_bytes)
        encoded = rel.encode()
        outer.update(len(encoded).to_bytes(8, "big"))
        outer.update(encoded)
        outer.update(inner.digest())
    return "sha256:" + outer.hexdigest()


# --- resolving what the caller passed ---------------------------------------------------------------


def local_path(source: str | os.PathLike[str]) -> Path | None:
    """The local file or directory `source` names (a path or a file:// URI), or None."""
    if isinstance(source, os.PathLike):
        path = Path(source)
    elif source.startswith("file://"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            return None
        path = Path(url2pathname(unquote(parts.path)))
    elif _SCHEME_RE.match(source):
        return None
    else:
        path = Path(source).expanduser()
    return path if path.is_file() or path.is_dir() else None


def resolve_dataset(
    dataset: Dataset | str,
    *,
    version: str | None = None,
    digest: str | None = None,
    source: str | os.PathLike[str] | None = None,
    source_type: str | None = None,
    max_digest_bytes: int = MAX_DIGEST_BYTES,
) -> Dataset:
    """A complete Dataset from what log_input/log_output got: keywords override the Dataset's
    fields; a local source is normalised to a file:// URI and hashed when no digest is given."""
    if isinstance(dataset, str):
        dataset = Dataset(name=dataset)
    elif not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a Dataset or a name, not {type(dataset).__name__}")
    name = check_name(dataset.name, "dataset name")
    raw_version = dataset.version if version is None else version
    checked_version = None if raw_version is None or raw_version == "" else check_version(raw_version)
    checked_digest = (dataset.digest if digest is None else digest) or None
    if checked_digest is not None:
        digest_hex(checked_digest)  # raises when it is not a digest
    raw_source = dataset.source if source is None else source
    kind = dataset.source_type if source_type is None else source_type
    path = local_path(raw_source) if raw_source else None
    if path is not None:
        text = path.resolve().as_uri()
        kind = kind or "local"
        if checked_digest is None:
            checked_digest = compute_digest(path, max_digest_bytes)
    else:
        text = os.fspath(raw_source)
        scheme = _SCHEME_RE.match(text)
        kind = kind or (scheme[1].lower() if scheme else "")
    if checked_version is None and checked_digest is None:
        where = f"source {text!r} is not a local file or directory" if text else "it has no source"
        raise ValueError(f"dataset {name!r}: {where}; pass version= or digest= to identify it")
    return Dataset(name, checked_version, checked_digest, text, kind)


def check_run_id(run_id: object) -> str:
    """`run_id` if it has the shape of a run id; ValueError otherwise."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise ValueError(f"run id {run_id!r} must be 1..64 characters of letters, digits, '_', '-', '.'")
    return run_id


def check_relation(relation: object) -> str:
    """`relation` if it is a usable edge label (a letter, then letters, digits, '_', '.', '-')."""
    if not isinstance(relation, str) or not _RELATION_RE.match(relation):
        raise ValueError(
            f"relation {relation!r} must be 1..64 letters, digits, '_', '.', '-' (a letter first)"
        )
    return relation


# --- events ---------------------------------------------------------------------------------------------


def _link(source_kind: str, source_id: str, target_kind: str, target_id: str, relation: str) -> Event:
    payload = LineageLinkedPayload.model_validate(
        {
            "source_kind": source_kind,
            "source_id": source_id,
            "target_kind": target_kind,
            "target_id": target_id,
            "relation": relation,
        }
    )
    return EventType.LINEAGE_LINKED, payload.model_dump()


def input_events(
    run_id: str, ds: Dataset, context: str = DEFAULT_CONTEXT, tags: Mapping[str, Any] | None = None
) -> list[Event]:
    """InputsLogged for a resolved dataset, then its edge dataset -> run ("input")."""
    input_tags = {check_key(k, "input tag key"): tag_value(k, v) for k, v in (tags or {}).items()}
    input_tags[CONTEXT_TAG] = tag_value(CONTEXT_TAG, context)
    if ds.version is not None:
        input_tags[VERSION_TAG] = ds.version
    entry = DatasetInput.model_validate(
        {
            "name": ds.name,
            "digest": ds.digest or "",
            "source_type": ds.source_type,
            "source": ds.source,
            "tags": input_tags,
        }
    )
    inputs = InputsLoggedPayload(datasets=[entry]).model_dump(by_alias=True)
    return [(EventType.INPUTS_LOGGED, inputs), _link("dataset", ds.id, "run", run_id, "input")]


def output_events(run_id: str, ds: Dataset) -> list[Event]:
    """The edge run -> dataset ("output") of a resolved dataset."""
    return [_link("run", run_id, "dataset", ds.id, "output")]


def model_events(run_id: str, name: str, version: int | None, source: str = "") -> tuple[str, list[Event]]:
    """(model id, events) of a model the run produced.

    With a version: ModelVersionRegistered, then the edge run -> `name@version` ("produced").
    Without one, nothing is registered (only a registry hands out version numbers) and the
    edge goes to `name@run:<run_id>`.
    """
    node = model_id(name, version, run_id=run_id)
    events: list[Event] = []
    if version is not None:
        payload = ModelVersionRegisteredPayload(model_name=name, version=version, source=str(source))
        events.append((EventType.MODEL_VERSION_REGISTERED, payload.model_dump()))
    events.append(_link("run", run_id, "model", node, "produced"))
    return node, events


def derived_events(run_id: str, other_run_id: str, relation: str) -> list[Event]:
    """The edge other run -> this run, labelled `relation` (fine_tuned_from, resumed_from, ...)."""
    check_run_id(other_run_id)
    check_relation(relation)
    if other_run_id == run_id:
        raise ValueError("a run cannot derive from itself")
    return [_link("run", other_run_id, "run", run_id, relation)]
