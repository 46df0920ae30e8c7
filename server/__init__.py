"""The core of the real-time server: nothing here knows about HTTP handlers."""
