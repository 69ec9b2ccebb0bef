"""The command-line interface (``harness``, ``python -m harness``): ``app`` and ``main``."""

from .root import app, main

__all__ = ["app", "main"]
