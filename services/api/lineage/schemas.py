"""Response shapes of the lineage route."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

MIN_DEPTH, MAX_DEPTH, DEFAULT_DEPTH = 1, 10, 3


class NodeKind(StrEnum):
    """What a node of the graph is."""

    DATASET = "dataset"
    RUN = "run"
    MODEL = "model"


class Direction(StrEnum):
    """Which edges a walk follows from each node it reaches."""

    BOTH = "both"
    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


class NodeRef(BaseModel):
    """A node by kind and id."""

    kind: NodeKind
    id: str


class LineageNode(BaseModel):
    """A node of the graph, with what the metadata store knows of it."""

    kind: NodeKind
    id: str = Field(description="run id; dataset `name@version` or `name@<digest12>`; model `name@version`.")
    label: str | None = Field(None, description="Display name (run name, dataset or model name).")
    depth: int = Field(description="Fewest hops from the root (0 for the root).")
    details: dict[str, str | int | None] = Field(
        default_factory=dict,
        description="run: status, experiment_id, lifecycle_stage, start_time, end_time; "
        "dataset: version, digest, source, source_type (from the run inputs that logged it); "
        "model: name, version, stage, source, run_id.",
    )


class LineageEdge(BaseModel):
    """A directed edge: source -> target, e.g. dataset -input-> run -produced-> model."""

    source_kind: NodeKind
    source_id: str
    target_kind: NodeKind
    target_id: str
    relation: str


class LineageGraph(BaseModel):
    """The graph around a root, at most `depth` hops away."""

    root: NodeRef
    depth: int
    direction: Direction
    nodes: list[LineageNode] = Field(description="The root first, then by depth, kind and id.")
    edges: list[LineageEdge]
    truncated: bool = Field(
        False, description="True when the walk reached the server's size limit; deeper parts are missing."
    )
