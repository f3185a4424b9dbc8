"""Experiments: list, get, create, rename, delete."""
