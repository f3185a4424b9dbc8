"""Readable names for runs created without one (as MLflow does: "adjective-noun-123")."""

from __future__ import annotations

import secrets

_ADJECTIVES = (
    "amber", "bold", "brisk", "calm", "clever", "crisp", "daring", "eager", "fast", "gentle",
    "glad", "keen", "lucid", "merry", "nimble", "polite", "quiet", "rapid", "sharp", "steady",
    "sunny", "swift", "tidy", "vivid", "warm", "wise", "young", "zesty",
)  # fmt: skip
_NOUNS = (
    "ant", "bass", "bee", "crane", "deer", "dove", "eel", "finch", "fox", "gull", "hare",
    "hawk", "ibis", "jay", "kite", "lark", "lynx", "mole", "newt", "owl", "panda", "quail",
    "ray", "seal", "swan", "toad", "vole", "wolf", "wren", "yak",
)  # fmt: skip


def generate_run_name() -> str:
    """A random readable name such as "brisk-owl-417"."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(1000)}"
