"""The web UI: static ES modules served at /ui/, browser sign-in, and GET /api/v1/me (ADR 0013)."""
