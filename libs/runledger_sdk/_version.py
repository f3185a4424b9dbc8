"""The SDK version (written into every event's producer block)."""

__version__ = "0.1.0"
