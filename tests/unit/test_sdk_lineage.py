"""SDK lineage: node ids, dataset digests, and the events log_input/log_output/log_model/derived_from emit."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import runledger_sdk as rl
from runledger.events.codec import DecodedEvent, decode
from runledger.events.models import (
    EventType,
    InputsLoggedPayload,
    LineageLinkedPayload,
    ModelVersionRegisteredPayload,
)
from runledger.lineage import (
    dataset_id,
    dataset_name,
    digest_hex,
    model_id,
    parse_model_id,
)
from runledger_sdk.lineage import (
    CONTEXT_TAG,
    Dataset,
    DigestTooLarge,
    compute_digest,
    resolve_dataset,
)
from runledger_sdk.run import RunEndedError

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"


# --- ids -----------------------------------------------------------------------------------------


def test_dataset_ids() -> None:
    assert dataset_id("mnist", "v1") == "mnist@v1"
    assert dataset_id("mnist", "v1", DIGEST) == "mnist@v1"  # the version wins
    assert dataset_id("mnist", digest=DIGEST) == "mnist@0123456789ab"
    assert dataset_id("mnist", digest=HEX.upper()) == "mnist@0123456789ab"
    assert dataset_id("mnist", "", DIGEST) == "mnist@0123456789ab"
    assert dataset_id("org/a@b", "2024") == "org/a@b@2024"
    assert dataset_name("org/a@b@2024") == "org/a@b"
    with pytest.raises(ValueError, match="version or a digest"):
        dataset_id("mnist")
    with pytest.raises(ValueError, match="'@'"):
        dataset_id("mnist", "v@1")
    with pytest.raises(ValueError, match="hex"):
        dataset_id("mnist", digest="sha256:nothex")
    with pytest.raises(ValueError, match="non-empty"):
        dataset_id("", "v1")
    assert digest_hex(DIGEST) == HEX


def test_model_ids() -> None:
    assert model_id("net", 3) == "net@3"
    assert model_id("net", run_id="abc") == "net@run:abc"
    assert parse_model_id("org/net@3") == ("org/net", 3, None)
    assert parse_model_id("net@run:abc") == ("net", None, "abc")
    for bad_version in (0, -1, True, 2**31):
        with pytest.raises(ValueError, match="model version"):
            model_id("net", bad_version)
    with pytest.raises(ValueError, match="needs a version"):
        model_id("net")
    for bad_id in ("net", "net@v3", "net@0", "net@run:"):
        with pytest.raises(ValueError, match="not a model id"):
            parse_model_id(bad_id)


# --- digests --------------------------------------------------------------------------------------


def test_file_digest_is_sha256sum(tmp_path: Path) -> None:
    data = b"x" * (3 << 20) + b"tail"  # more than one chunk
    path = tmp_path / "train.bin"
    path.write_bytes(data)
    assert compute_digest(path) == "sha256:" + hashlib.sha256(data).hexdigest()


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_directory_digest_covers_paths_and_contents(tmp_path: Path) -> None:
    files = {"a.txt": b"alpha", "sub/b.txt": b"beta", "sub/deeper/c": b""}
    first = compute_digest(_tree(tmp_path / "one", files))
    # Created in another order, with an empty directory: same digest.
    again = _tree(tmp_path / "two", dict(reversed(list(files.items()))))
    (again / "empty").mkdir()
    assert compute_digest(again) == first
    assert compute_digest(_tree(tmp_path / "three", files | {"a.txt": b"alphA"})) != first
    renamed = {"b.txt" if k == "a.txt" else k: v for k, v in files.items()}
    assert compute_digest(_tree(tmp_path / "four", renamed)) != first
    # Path/content boundaries are framed: moving bytes between name and content changes it.
    assert compute_digest(_tree(tmp_path / "p", {"ab": b"c"})) != compute_digest(
        _tree(tmp_path / "q", {"a": b"bc"})
    )


def test_digest_size_cap(tmp_path: Path) -> None:
    _tree(tmp_path / "big", {"a": b"1" * 600, "b/c": b"2" * 600})
    with pytest.raises(DigestTooLarge, match=r"1200 bytes.*digest="):
        compute_digest(tmp_path / "big", max_bytes=1000)
    assert compute_digest(tmp_path / "big", max_bytes=1200).startswith("sha256:")
    with pytest.raises(ValueError, match="not a file or a directory"):
        compute_digest(tmp_path / "missing")


# --- resolving datasets ---------------------------------------------------------------------------------


def test_local_sources_are_hashed_and_normalised(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(b"id,label\n1,cat\n")
    expected = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    for source in (str(path), path, path.as_uri()):
        ds = resolve_dataset("labels", source=source)
        assert ds == Dataset("labels", None, expected, path.resolve().as_uri(), "local")
        assert ds.id == f"labels@{expected[7:19]}"
    # A given digest is trusted (not recomputed); a version is kept.
    ds = resolve_dataset(Dataset("labels", source=str(path)), version="v2", digest=DIGEST)
    assert (ds.version, ds.digest, ds.id) == ("v2", DIGEST, "labels@v2")
    with pytest.raises(DigestTooLarge):
        resolve_dataset("labels", source=path, max_digest_bytes=4)


def test_remote_sources_need_a_version_or_digest() -> None:
    ds = resolve_dataset("imagenet", version="2012", source="s3://bucket/imagenet")
    assert ds == Dataset("imagenet", "2012", None, "s3://bucket/imagenet", "s3")
    ds = resolve_dataset(Dataset("imagenet", digest=DIGEST, source="hf://datasets/x", source_type="hub"))
    assert (ds.source_type, ds.id) == ("hub", "imagenet@0123456789ab")
    with pytest.raises(ValueError, match="not a local file or directory; pass version= or digest="):
        resolve_dataset("imagenet", source="s3://bucket/imagenet")
    with pytest.raises(ValueError, match="no source; pass version= or digest="):
        resolve_dataset("imagenet")
    with pytest.raises(ValueError, match="not a local file"):
        resolve_dataset("typo", source="/no/such/dir")
    with pytest.raises(TypeError):
        resolve_dataset(42)  # type: ignore[arg-type]


# --- events ---------------------------------------------------------------------------------------------


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[rl.InMemoryTransport]:
    memory = rl.InMemoryTransport()
    rl.init(transport=memory, spool_dir=tmp_path / "spool", batch_interval_ms=20, system_metrics_interval_s=0)
    yield memory
    rl.shutdown(5)


def _lineage_events(transport: rl.InMemoryTransport, run_id: str) -> list[DecodedEvent]:
    assert rl.flush(5)
    wanted = {EventType.INPUTS_LOGGED, EventType.LINEAGE_LINKED, EventType.MODEL_VERSION_REGISTERED}
    decoded = [decode(r.value) for r in transport.records]  # every record passes the projector's check
    return [e for e in decoded if e.envelope.type in wanted and e.envelope.run_id == run_id]


def _link(event: DecodedEvent) -> tuple[str, str, str, str, str]:
    p = event.payload
    assert isinstance(p, LineageLinkedPayload)
    return (p.source_kind, p.source_id, p.target_kind, p.target_id, p.relation)


def test_log_input_emits_inputs_then_edge(transport: rl.InMemoryTransport, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _tree(data, {"x.csv": b"1,2\n", "y.csv": b"3,4\n"})
    with rl.start_run() as run:
        ds = run.log_input("train", source=data, context="eval", tags={"split": "val"})
        remote = run.log_input(Dataset("imagenet", version="2012", source="s3://b/imagenet"))
    events = _lineage_events(transport, run.run_id)
    assert [e.envelope.type for e in events] == [EventType.INPUTS_LOGGED, EventType.LINEAGE_LINKED] * 2
    inputs = events[0].payload
    assert isinstance(inputs, InputsLoggedPayload)
    (entry,) = inputs.datasets
    assert (entry.name, entry.digest, entry.source, entry.source_type) == (
        "train",
        compute_digest(data),
        data.resolve().as_uri(),
        "local",
    )
    assert entry.tags == {"split": "val", CONTEXT_TAG: "eval"}
    assert _link(events[1]) == ("dataset", ds.id, "run", run.run_id, "input")
    remote_inputs = events[2].payload
    assert isinstance(remote_inputs, InputsLoggedPayload)
    assert remote_inputs.datasets[0].digest == "" and remote_inputs.datasets[0].tags["version"] == "2012"
    assert _link(events[3]) == ("dataset", "imagenet@2012", "run", run.run_id, "input")
    assert remote.id == "imagenet@2012"
    for event in events:
        assert event.envelope.experiment_id == run.experiment_id


def test_log_output_model_and_derived_from(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as base:
        pass
    with rl.start_run() as run:
        out = run.log_output("preds", version="v1", source="s3://b/preds")
        registered = run.log_model("net", version=2, source="s3://models/net")
        unregistered = run.log_model("scratch")
        run.derived_from(base, relation="fine_tuned_from")
        run.derived_from("resumable.run-1", relation="resumed_from")
    assert (out.id, registered, unregistered) == ("preds@v1", "net@2", f"scratch@run:{run.run_id}")
    events = _lineage_events(transport, run.run_id)
    assert [e.envelope.type for e in events] == [
        EventType.LINEAGE_LINKED,
        EventType.MODEL_VERSION_REGISTERED,
        EventType.LINEAGE_LINKED,
        EventType.LINEAGE_LINKED,
        EventType.LINEAGE_LINKED,
        EventType.LINEAGE_LINKED,
    ]
    rid = run.run_id
    assert _link(events[0]) == ("run", rid, "dataset", "preds@v1", "output")
    model = events[1].payload
    assert isinstance(model, ModelVersionRegisteredPayload)
    assert (model.model_name, model.version, model.source, model.stage) == (
        "net",
        2,
        "s3://models/net",
        "None",
    )
    assert _link(events[2]) == ("run", rid, "model", "net@2", "produced")
    assert _link(events[3]) == ("run", rid, "model", f"scratch@run:{rid}", "produced")
    assert _link(events[4]) == ("run", base.run_id, "run", rid, "fine_tuned_from")
    assert _link(events[5]) == ("run", "resumable.run-1", "run", rid, "resumed_from")


def test_bad_lineage_calls_fail_in_the_caller(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        with pytest.raises(ValueError, match="itself"):
            run.derived_from(run)
        with pytest.raises(ValueError, match="relation"):
            run.derived_from("other", relation="fine tuned")
        with pytest.raises(ValueError, match="run id"):
            run.derived_from("no/slashes")
        with pytest.raises(ValueError, match="model version"):
            run.log_model("net", version=0)
        with pytest.raises(ValueError, match="version= or digest="):
            run.log_input("mystery", source="gs://bucket/x")
    assert _lineage_events(transport, run.run_id) == []
    for call in (
        lambda: run.log_input("d", version="1"),
        lambda: run.log_output("d", version="1"),
        lambda: run.log_model("m", 1),
        lambda: run.derived_from("other"),
    ):
        with pytest.raises(RunEndedError):
            call()
