"""Every error harness raises, in three families kept apart.

- ``ConfigError``: bad input from a user (a file, a field, an argument). Exit code 2.
- ``HarnessError`` subclasses for run failures: a provider that gave up, a tool that broke.
  Exit code 1 when a run ends that way.
- ``ControlSignal`` subclasses are control flow (budget exhausted, lease lost), not failures.

Structured fields live on attributes; ``str(error)`` is one human sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class HarnessError(Exception):
    """Base class for run failures."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (file, line, field), what is wrong and, when one
    is known, how to fix it (``hint``: "did you mean `web_fetch`?")."""

    file: str
    message: str
    field: str | None = None
    line: int | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": {self.field}"
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}: {self.message}{hint}"

    def sort_key(self) -> tuple[str, int, str]:
        """File, then line (problems without one first), then field: reading order."""
        return (self.file, self.line or 0, self.field or "")


class ConfigError(Exception):
    """Bad configuration or input. Holds every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(file="<input>", message=problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = problems
        super().__init__("\n".join(str(p) for p in problems))


class ProviderError(HarnessError):
    """A model call failed for good (after retries and fallbacks).

    ``records`` holds one call record per attempt that reached a server, so the ledger
    can account for them even though the call failed.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str,
        status: int | None = None,
        body: str | None = None,
        retryable: bool = False,
        records: list[Any] | None = None,
        kind: str | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.status = status
        self.body = body
        self.retryable = retryable
        self.records: list[Any] = list(records or [])
        self.kind = kind  # the last attempt's: "http", "connect", "timeout", "format", "stream"
        super().__init__(message)

    @property
    def setup(self) -> bool:
        """A failure of the setup rather than of the moment: the endpoint unreachable, the key
        refused, the model or the API path unknown. Waiting will not mend it."""
        return self.kind == "connect" or self.status in (401, 403, 404)


class ResponseFormatError(ProviderError):
    """The server answered, but not with a valid chat completion (bad JSON, no choices...)."""


class ToolError(HarnessError):
    """A tool failed. Its message goes back to the model as the tool result."""


class ToolsUnavailable(HarnessError):
    """Tools an agent names could not be made ready (e.g. their MCP server did not start).
    The task fails, and is retried later when ``retryable``."""

    def __init__(self, message: str, *, source: str, retryable: bool = True) -> None:
        self.source = source
        self.retryable = retryable
        super().__init__(message)


class DatabaseFailing(HarnessError):
    """The database kept failing with errors that are not transient (a file damaged under a
    running worker, a table gone) for longer than ``worker.db_failure_exit_s``: the worker
    stops, so a supervisor restarts it or a human sees it. Exit code 2."""


class RunFailed(HarnessError):
    """A task ended in failure; ``reason`` says why in one sentence."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ControlSignal(Exception):
    """Base for control-flow signals that unwind a task without failing it."""


@dataclass
class BudgetExceeded(ControlSignal):
    """A call would take an agent (or the workspace) past its daily budget.

    ``used`` is what settled calls spent, ``reserved`` what calls in flight hold, ``requested``
    the least this call needs (its prompt estimate and a useful minimum of output). Three
    cases, told apart here: the call alone is larger than the whole budget (``impossible``:
    the task fails), the room is only held by calls in flight (``waiting``: the task waits a
    little), or the day's budget is spent (the task pauses until the next day).
    """

    agent: str
    budget: str
    limit: float
    used: float
    requested: float
    day: str
    reserved: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    @property
    def impossible(self) -> bool:
        return self.requested > self.limit

    @property
    def waiting(self) -> bool:
        return not self.impossible and self.used + self.requested <= self.limit

    def __str__(self) -> str:
        held = f" ({self.reserved:g} more held by calls in flight)" if self.reserved else ""
        if self.impossible:
            return (
                f"one call of agent {self.agent!r} needs at least {self.requested:g}, more than "
                f"its whole {self.budget} of {self.limit:g}"
            )
        return (
            f"agent {self.agent!r} is out of its {self.budget} for {self.day}: "
            f"used {self.used:g} of {self.limit:g}{held}, this call needs at least "
            f"{self.requested:g}"
        )


class LeaseLost(ControlSignal):
    """This worker no longer owns the task (lease expired and was taken, or cancelled)."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        super().__init__(f"lease on task {task_id} was lost")
