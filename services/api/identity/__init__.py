"""GET /whoami: what the presented key is (the SDK learns its tenant from it)."""
