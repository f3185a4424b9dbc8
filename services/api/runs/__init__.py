"""Runs: search, get, create, and everything logged to a run."""
