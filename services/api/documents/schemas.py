"""Response shapes of run documents: the captured payloads, as the event contract defines them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from runledger.events.models import CodeStateCapturedPayload, EnvironmentCapturedPayload


class RunDocuments(BaseModel):
    """What a run captured about its code and its environment (null when it captured nothing)."""

    code_state: CodeStateCapturedPayload | None = Field(
        None, description="Git commit, branch, remote, dirty flag, capped diff, entry point and arguments."
    )
    environment: EnvironmentCapturedPayload | None = Field(
        None, description="Python, platform, installed packages, environment_hash, conda, CUDA and driver."
    )
