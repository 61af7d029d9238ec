"""Helpers the tests share (no fixtures: those live in tests/conftest.py)."""
