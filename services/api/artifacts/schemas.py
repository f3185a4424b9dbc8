"""Shapes of the native artifact routes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.api.schemas import WriteResult


class ArtifactFile(BaseModel):
    """A logged file of a run."""

    path: str = Field(description="Relative to the run's artifact root.")
    size: int = Field(description="Bytes.")
    digest: str = Field(description='"sha256:<hex>" of the content (the blob it is stored as).')
    media_type: str = Field(description="Guessed from the path's extension.")


class ArtifactWriteResult(WriteResult):
    """A PUT of a file: what was stored and whether reads see it yet."""

    run_id: str
    artifact: ArtifactFile


class ArtifactEntry(BaseModel):
    """A file or a directory of a listing."""

    path: str = Field(description="Relative to the run's artifact root.")
    is_dir: bool
    file_size: int | None = Field(None, description="Bytes (files only).")
    digest: str | None = Field(None, description="Files only.")
    media_type: str | None = Field(None, description="Files only.")


class ArtifactList(BaseModel):
    """The entries directly in a directory of a run, directories and files by name."""

    root: str = Field(description="The listed directory ('' = the run's artifact root).")
    files: list[ArtifactEntry]
