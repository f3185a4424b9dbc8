"""The event contract and its wire codec."""
