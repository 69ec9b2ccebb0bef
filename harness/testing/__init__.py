"""Test doubles shipped with harness.

``ScriptedProvider`` (a deterministic Provider answering from a script), ``FakeClock`` (a
``clock``/``sleep`` pair that moves at once), and the bodies an OpenAI-compatible server
sends (``chat_completion``, ``chat_stream``). The fake server (``harness.testing.fakeserver``,
also ``python -m harness.testing.fakeserver``) is imported on its own: it needs aiohttp's
server side.
"""

from .clock import FakeClock
from .scripted import ScriptedProvider, ScriptExhausted, Step, StepLike
from .wire import chat_completion, chat_stream, chat_stream_events

__all__ = [
    "FakeClock",
    "ScriptExhausted",
    "ScriptedProvider",
    "Step",
    "StepLike",
    "chat_completion",
    "chat_stream",
    "chat_stream_events",
]
