"""Torch-only building blocks with no model knowledge."""
