"""harness: a runtime for teams of LLM agents that work unattended overnight."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
