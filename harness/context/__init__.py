"""A task's context window: what it sends its model, and keeping that inside the window.

``view``: the as-sent messages (the transcript, shortened by the task's compactions);
``window``: estimates of a request and the room it has; ``overflow``: a server's "prompt too
long" error recognised; ``task``: the per-task object the loop uses (fit a request, keep a
large result whole, compact, recover from an overflow).
"""

from .overflow import Overflow, overflow
from .task import COMPACTION, TaskContext
from .view import View

__all__ = ["COMPACTION", "Overflow", "TaskContext", "View", "overflow"]
