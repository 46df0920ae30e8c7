"""Thin HTTP and WebSocket handlers: decode, call into ``server``, encode."""
