"""Artifacts of runs: content-addressed blobs (runledger.artifacts) and their metadata (events)."""
