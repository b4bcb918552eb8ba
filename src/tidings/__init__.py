"""Tidings: a real-time notification server speaking STOMP over WebSocket."""

__version__ = "0.1.0"
