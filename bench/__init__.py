"""Tidings' benchmark suite: ``./run bench`` (see bench/README.md)."""
