"""Platform administration: operations on the whole deployment (replay)."""
