"""Renders the event contract as JSON Schema files under schemas/v<N>/ (checked in)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runledger.events.models import PAYLOAD_TYPES, SCHEMA_VERSION, Envelope


def _event_schema(event_type: str, payload_schema: dict[str, Any]) -> dict[str, Any]:
    envelope = Envelope.model_json_schema()
    envelope["properties"]["type"] = {"const": event_type, "title": "Type", "type": "string"}
    defs = {**envelope.pop("$defs", {}), **payload_schema.pop("$defs", {})}
    envelope["properties"]["payload"] = payload_schema
    envelope["title"] = f"{event_type} (schema_version {SCHEMA_VERSION})"
    if defs:
        envelope["$defs"] = defs
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **envelope}


def render_schemas() -> dict[str, str]:
    """File name -> JSON text for every event type and the envelope."""
    files = {"envelope.json": Envelope.model_json_schema()}
    for event_type, payload_model in PAYLOAD_TYPES.items():
        files[f"{event_type.value}.json"] = _event_schema(event_type.value, payload_model.model_json_schema())
    return {name: json.dumps(schema, indent=2, sort_keys=True) + "\n" for name, schema in files.items()}


def write_schemas(root: Path) -> list[Path]:
    """Write the files under root/v<SCHEMA_VERSION>/ and return their paths."""
    target = root / f"v{SCHEMA_VERSION}"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = target / name
        path.write_text(text)
        written.append(path)
    return written
