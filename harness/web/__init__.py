"""The web dashboard (``harness serve``): pages, a JSON API and ``/metrics`` over the store.

``create_app(rt, guard=..., read_only=...)`` is the Starlette application; ``Guard`` holds who
may look and act (``security``). Pages read through ``reading``, which composes the CLI's
own query functions (``store.views``, ``ledger.reads``, ``schedules.describe``, the morning
report): the dashboard, the API and the CLI cannot disagree.
"""

from .app import create_app
from .security import TOKEN_ENV, Guard, is_loopback

__all__ = ["TOKEN_ENV", "Guard", "create_app", "is_loopback"]
