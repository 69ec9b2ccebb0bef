"""Model providers: the ``Provider`` seam and its OpenAI-compatible implementation.

``base``: the seam (``Provider.complete(request) -> Completion``). ``openai``: the client for
every OpenAI-compatible endpoint (retries and fallbacks decided there, and only there), on
``transport`` (one provider's pooled HTTP client, its pacing, one attempt; ``fastpath``: the
direct aiohttp POST), ``wire`` (reading replies and streams), ``pacing`` (429 pauses and
per-minute budgets), ``jsontools`` (tools for models without native tool calls) and
``tokens`` (estimates). ``local``: the embedded llama.cpp server.
"""

from .base import Attempts, Completion, Provider
from .openai import OpenAIProvider, usage_from_wire

__all__ = ["Attempts", "Completion", "OpenAIProvider", "Provider", "usage_from_wire"]
