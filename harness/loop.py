"""One task of one agent: budget check -> model call -> persist -> tools / delegate / finish.

The loop is resumable at every point. Its state is the task's transcript in the database:

- an assistant message is persisted together with its ledger rows (one transaction) before
  anything acts on it, so a crash never re-sends a recorded step (invariant 1);
- tool calls of the last assistant message that have no result yet are *pending*; a resumed
  task executes them (tools are at-least-once), delegate calls become child tasks;
- a parent that delegated becomes ``waiting`` and holds no worker; when all its children are
  settled it is queued again and each child's result (or error) becomes the delegate tool
  result.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio
import structlog
from sqlalchemy import Connection

from . import ledger
from .agents import DELEGATE, AgentSpec
from .errors import BudgetExceeded, LeaseLost, ProviderError, RunFailed, ToolError, ToolsUnavailable
from .messages import ChatMessage, ChatRequest, ToolCall, ToolSpec
from .provider import Completion
from .provider.jsontools import new_call_id
from .provider.tokens import estimate_prompt_tokens
from .runtime import Runtime
from .settings import Settings
from .store import TERMINAL, TaskStatus, queue
from .store.queue import NewTask, Task
from .store.transcripts import StoredMessage, append_messages, load_transcript
from .tools import ToolContext, delegate_spec, delegation
from .usage import CallRecord

log = structlog.get_logger("harness.loop")


def _delegated_to(transcript: Sequence[StoredMessage]) -> set[str]:
    """The agents this task's delegate calls named (valid or not)."""
    names = set()
    for sm in transcript:
        for call in sm.message.tool_calls or []:
            if call.function.name == DELEGATE:
                try:
                    names.add(str(json.loads(call.function.arguments or "{}").get("agent")))
                except (ValueError, AttributeError):
                    continue
    return names


def pending_calls(transcript: Sequence[StoredMessage]) -> list[ToolCall]:
    """Tool calls of the last assistant message that have no tool result yet."""
    last = next((sm for sm in reversed(transcript) if sm.message.role == "assistant"), None)
    if last is None or not last.message.tool_calls:
        return []
    answered = {sm.message.tool_call_id for sm in transcript if sm.seq > last.seq}
    return [c for c in last.message.tool_calls if c.id not in answered]


class TaskRunner:
    """Runs one claimed task until it finishes, waits, pauses or fails."""

    def __init__(self, rt: Runtime, task: Task, worker_id: int, state: State | None = None) -> None:
        self.rt = rt
        self.task = task
        self.worker_id = worker_id
        self.state = state  # read with the claim (see ``claim``), or here at the start
        self.log = log.bind(run_id=task.run_id, task_id=task.id, agent=task.agent)
        self.transcript: list[StoredMessage] = []
        self.unsaved: list[ChatMessage] = []  # the opening, stored with the first reservation
        self.n_children = 0  # sub-tasks created so far (the max_children limit)

    @property
    def agent(self) -> AgentSpec:
        return self.rt.team[self.task.agent]

    async def run(self) -> TaskStatus:
        """Work the task; returns the status it was left in. Never raises for task failures."""
        if self.task.agent not in self.rt.team:
            return await self._fail(f"unknown agent {self.task.agent!r}", retry=False)
        limit = self.agent.timeout_s or self.rt.settings.limits.task_timeout_s
        try:
            with anyio.fail_after(limit):
                return await self._run()
        except TimeoutError:
            return await self._fail(
                f"task exceeded its wall-clock limit of {limit:g}s", retry=False
            )
        except LeaseLost:
            self.log.warning("task_lease_lost")
            return TaskStatus.CANCELLED
        except BudgetExceeded as exc:
            return await self._pause(exc)
        except RunFailed as exc:
            return await self._fail(exc.reason, retry=False)
        except (ProviderError, ToolsUnavailable) as exc:
            return await self._fail(str(exc), retry=exc.retryable)

    async def _run(self) -> TaskStatus:
        if self.state is None:
            self.state = await self.rt.store.read(load_state, self.task)
        await self.rt.tools.prepare(self.agent.tools)  # e.g. start an MCP server first used
        self.transcript, self.n_children = self.state
        if not self.transcript:  # a new task: its opening is stored with its first call's
            self.unsaved = self._opening()  # reservation (one transaction fewer)
            t = queue.now()
            self.transcript = [StoredMessage(i, m, None, t) for i, m in enumerate(self.unsaved)]
        while True:
            pending = pending_calls(self.transcript)
            if pending:
                waiting = await self._act(pending)
                if waiting:
                    return TaskStatus.WAITING
                continue
            last = self.transcript[-1].message
            if last.role == "assistant":
                return await self._complete(last.content or "")
            if await self._step():  # answered: the step's transaction completed the task
                return self._done(self.transcript[-1].message.content or "")

    def _opening(self) -> list[ChatMessage]:
        return [
            ChatMessage(role="system", content=self.agent.prompt),
            ChatMessage(role="user", content=self.task.input),
        ]

    # -- model steps -----------------------------------------------------------------------

    def _next_seq(self) -> int:
        return self.transcript[-1].seq + 1 if self.transcript else 0

    def _steps_taken(self) -> int:
        return sum(1 for sm in self.transcript if sm.message.role == "assistant")

    def _request(self) -> ChatRequest:
        agent, settings = self.agent, self.rt.settings
        model = agent.model_name(settings)
        steps = self._steps_taken()
        max_steps = agent.max_steps or settings.limits.max_steps
        if steps >= max_steps:
            raise RunFailed(
                f"agent {agent.name!r} reached max_steps={max_steps} without a final answer"
            )
        tools, choice, min_calls = self._tool_offer(last_step=steps == max_steps - 1)
        return ChatRequest(
            model=model,
            messages=[sm.message for sm in self.transcript],
            tools=tools or None,
            tool_choice=choice if tools else None,
            max_tokens=agent.max_tokens or settings.models[model].max_tokens,
            temperature=agent.temperature,
            min_tool_calls=min_calls,
        )

    def _delegable(self) -> list[str]:
        """Agents this task may still delegate to (depth and children limits applied)."""
        limits = self.rt.settings.limits
        if not self.agent.delegates_to or self.task.depth >= limits.max_depth:
            return []
        if self.n_children >= limits.max_children:
            return []
        rounds = self.agent.delegation_rounds
        if rounds is not None and self._delegation_rounds() >= rounds:
            return []
        return list(self.agent.delegates_to)

    def _delegation_rounds(self) -> int:
        """Model steps whose delegations are settled (each may fan out to several
        sub-tasks). A step still being acted on does not count yet."""
        answered = {sm.message.tool_call_id for sm in self.transcript if sm.message.tool_call_id}
        return sum(
            1
            for sm in self.transcript
            if any(
                c.function.name == DELEGATE and c.id in answered
                for c in sm.message.tool_calls or []
            )
        )

    def _tool_offer(
        self, *, last_step: bool
    ) -> tuple[list[ToolSpec], str | dict[str, Any] | None, int | None]:
        """Tools for this step, stable order first (delegate, then by name), and tool_choice."""
        agent = self.agent
        targets = self._delegable()
        done = _delegated_to(self.transcript)
        missing = agent.min_delegations - len(done & set(agent.delegates_to))
        descriptions = {
            n: self.rt.team[n].description for n in agent.delegates_to if n in self.rt.team
        }
        if missing > 0 and targets and not last_step:
            remaining = [t for t in targets if t not in done]
            return [delegate_spec(remaining, descriptions)], "required", missing
        specs = [delegate_spec(targets, descriptions)] if targets else []
        specs += self.rt.tools.specs(sorted(agent.tools))
        if not specs:
            return [], None, None
        return specs, ("none" if last_step else "auto"), None

    async def _step(self) -> bool:
        """One model call: request -> reserve -> call -> persist. True when it answered (the
        task is then complete); False when it made tool calls (now pending)."""
        request = self._request()
        held = Reservation(self, request)
        await self._reserve(held, request.model)
        self.rt.emit("model_call", task_id=self.task.id, agent=self.agent.name)
        try:
            completion = await self.rt.provider.complete(
                request, before_attempt=partial(self._reserve, held)
            )
        except (ProviderError, BudgetExceeded) as exc:
            await held.record_failure(getattr(exc, "records", []))
            raise
        except BaseException:
            # cancelled mid-call (shutdown, lost lease, cancelled run): the server may have
            # served it, so it is charged with its estimate rather than silently forgotten
            await held.unsettle("cancelled while in flight")
            raise
        await self._persist_step(held, completion)
        self.rt.emit(
            "model_done", task_id=self.task.id, agent=self.agent.name, usage=completion.usage
        )
        return not completion.message.tool_calls

    async def _reserve(
        self, held: Reservation, model: str, attempts: Sequence[CallRecord] = ()
    ) -> None:
        """Reserve the next attempt on ``model``; the first one also stores a new task's
        opening messages (one transaction fewer)."""
        stored = await held.take(model, attempts, opening=self.unsaved)
        if self.unsaved:
            self.transcript[: len(stored)] = stored
            self.unsaved = []

    async def _persist_step(self, held: Reservation, completion: Completion) -> None:
        """The answer, its ledger rows and the settled reservation, in one transaction. An
        answer that arrived is never dropped: the write is shielded from cancellation, and
        if it fails the call is charged with its estimate (unsettled)."""
        message = ChatMessage(
            role="assistant",
            content=completion.message.content,
            tool_calls=self._fresh_ids(completion.message.tool_calls or []) or None,
        )
        records = held.unrecorded(completion.records)
        try:
            with anyio.CancelScope(shield=True):
                appended = await self.rt.store.write(
                    _persist_step_tx, self.task, self.worker_id, held, records, message,
                    self._next_seq(),
                )  # fmt: skip
        except Exception:
            await held.unsettle("answered, but the answer could not be stored")
            raise
        if appended is None:
            raise LeaseLost(self.task.id)
        self.transcript.extend(appended)
        self.log.info(
            "model_step",
            model=completion.model,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            tool_calls=len(message.tool_calls or []),
        )

    def _fresh_ids(self, calls: list[ToolCall]) -> list[ToolCall]:
        """Tool calls with ids unique within the transcript: some servers number ids per reply
        (``call_0`` every step), and children and results are keyed by them."""
        seen = {c.id for sm in self.transcript for c in sm.message.tool_calls or []}
        out = []
        for call in calls:
            if call.id in seen or not call.id:
                call = call.model_copy(update={"id": new_call_id()})
            seen.add(call.id)
            out.append(call)
        return out

    # -- acting on tool calls ----------------------------------------------------------------

    def _check_loops(self) -> None:
        counts = Counter(
            (c.function.name, _canonical(c.function.arguments))
            for sm in self.transcript
            for c in sm.message.tool_calls or []
        )
        repeats = self.rt.settings.limits.loop_repeats
        for (name, args), n in counts.items():
            if n >= repeats:
                raise RunFailed(
                    f"loop detected: tool {name!r} was called {n} times "
                    f"with the same arguments {args[:200]}"
                )

    async def _act(self, pending: list[ToolCall]) -> bool:
        """Execute pending tool calls; returns True when the task now waits for children."""
        self._check_loops()
        delegations = [c for c in pending if c.function.name == DELEGATE]
        results: list[ChatMessage] = []
        ctx = ToolContext(
            run_id=self.task.run_id,
            task_id=self.task.id,
            agent=self.task.agent,
            workdir=self.rt.workspace.var_dir / "runs" / str(self.task.run_id),
            settings=self.rt.settings,
            notes=self.rt.store,
        )
        allowed = set(self.agent.tools)
        cap = self.rt.settings.limits.tool_output_chars
        for call in pending:
            if call.function.name == DELEGATE:
                continue
            res = await self.rt.tools.call(
                call.function.name, call.function.arguments, ctx, allowed=allowed, max_chars=cap
            )
            self.log.info("tool_called", tool=call.function.name, ok=res.ok)
            results.append(_tool_message(call, res.content))
        if results:
            await self._append(results)
        if delegations:
            return await self._delegate(delegations)
        return False

    async def _delegate(self, calls: list[ToolCall]) -> bool:
        kids = {c.parent_call_id: c for c in await self.rt.store.read(queue.children, self.task.id)}
        targets = set(self._delegable())
        room = self.rt.settings.limits.max_children - len(kids)
        results: list[ChatMessage] = []
        spawn: list[NewTask] = []
        for call in calls:
            child = kids.get(call.id)
            if child is not None and child.status in TERMINAL:
                results.append(_tool_message(call, _child_result(child)))
            elif child is not None:  # created before a crash, still running: wait for it
                spawn.append(NewTask(child.agent, child.input, call.id))
            else:
                try:
                    agent, task = delegation(call.function.arguments, targets)
                except ToolError as exc:
                    results.append(_tool_message(call, f"error: {exc}"))
                    continue
                if room <= 0:
                    limit = "this task has reached its limit of sub-tasks (limits.max_children)"
                    results.append(_tool_message(call, f"error: {limit}"))
                    continue
                spawn.append(NewTask(agent, task, call.id))
                room -= 1
        if results:
            await self._append(results)
        if not spawn:
            return False
        ids = await self.rt.store.write(queue.spawn_children, self.task, self.worker_id, spawn)
        self.log.info("task_delegated", children=ids)
        self.rt.emit("delegated", task_id=self.task.id, children=ids)
        return True

    # -- persistence helpers -------------------------------------------------------------------

    async def _append(self, msgs: list[ChatMessage]) -> None:
        appended = await self.rt.store.write(
            _append_tx, self.task.id, self.worker_id, msgs, self._next_seq()
        )
        if appended is None:
            raise LeaseLost(self.task.id)
        self.transcript.extend(appended)

    async def _complete(self, answer: str) -> TaskStatus:
        await self.rt.store.write(queue.complete, self.task.id, self.worker_id, answer)
        return self._done(answer)

    def _done(self, answer: str) -> TaskStatus:
        self.log.info("task_done", chars=len(answer))
        return TaskStatus.DONE

    async def _fail(self, reason: str, *, retry: bool) -> TaskStatus:
        backoff = self.rt.settings.worker.retry_backoff_s * (2 ** max(self.task.attempts - 1, 0))
        try:
            status = await self.rt.store.write(
                queue.fail, self.task, self.worker_id, reason, retry=retry, backoff_s=backoff
            )
        except LeaseLost:
            return TaskStatus.CANCELLED
        self.log.warning("task_failed", reason=reason, retry=status == TaskStatus.QUEUED)
        return status

    async def _pause(self, exc: BudgetExceeded) -> TaskStatus:
        # the budget refused is the one of the day the call was reserved on: its end, not
        # the end of today (a refusal just after midnight must not wait an extra day)
        until = ledger.day_after_start(exc.day, self.rt.settings.tz)
        try:
            key = self.agent.budget_key(self.rt.settings)
            await self.rt.store.write(
                queue.pause, self.task.id, self.worker_id, str(exc), until, key
            )
        except LeaseLost:
            return TaskStatus.CANCELLED
        self.log.warning("task_paused", reason=str(exc))
        return TaskStatus.PAUSED


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments or "{}"), sort_keys=True)
    except ValueError:
        return arguments


def _tool_message(call: ToolCall, content: str) -> ChatMessage:
    return ChatMessage(role="tool", tool_call_id=call.id, name=call.function.name, content=content)


def _child_result(child: Task) -> str:
    if child.status == TaskStatus.DONE:
        return child.result or ""
    why = child.error or child.status_reason or "no reason given"
    return f"error: sub-task {child.id} ({child.agent}) {child.status}: {why}"


class Reservation:
    """The budget held for one model call (invariant 2).

    Each attempt's worst case (prompt estimate + ``max_tokens``) is reserved before it is
    sent. Retries and fallbacks spend tokens too, so each reserves its own, in the transaction
    that records the attempts failed so far and releases what they held: a task holds one
    reservation at a time, and a worker that dies mid-call leaves at most one behind. After
    the call, its records settle the reservation (:func:`_persist_step_tx`,
    :meth:`record_failure`), or it is charged with its estimate (:meth:`unsettle`) when the
    call may have been served but its answer is not recorded.
    """

    def __init__(self, runner: TaskRunner, request: ChatRequest) -> None:
        task, agent, settings = runner.task, runner.agent, runner.rt.settings
        self.store = runner.rt.store
        self.settings = settings
        self.task_id, self.worker_id = task.id, runner.worker_id
        self.ctx = ledger.CallContext(agent.name, task.run_id, task.id, runner.worker_id)
        self.prompt_estimate = estimate_prompt_tokens(request)
        self.max_tokens = request.max_tokens
        self.budget, self.workspace_budget = agent.budget(settings), settings.budgets.workspace()
        self.ids: list[int] = []  # the reservation taken and not yet settled
        self.settled = 0  # how many of the call's attempts are in the ledger already

    def unrecorded(self, records: Sequence[CallRecord]) -> Sequence[CallRecord]:
        """The attempts among ``records`` not in the ledger yet."""
        return records[self.settled :]

    async def take(
        self,
        model: str,
        attempts: Sequence[CallRecord] = (),
        *,
        opening: Sequence[ChatMessage] = (),
    ) -> list[StoredMessage]:
        """Reserve the next attempt on ``model``, recording ``attempts`` (the failed ones so
        far); ``opening``: a new task's first messages, stored in the same transaction.
        Raises BudgetExceeded when a budget cannot cover it (nothing is then written)."""
        max_tokens = self.max_tokens or self.settings.models[model].max_tokens
        new = list(self.unrecorded(attempts))
        rid, stored = await self.store.write(
            _next_attempt_tx, self, new, model, max_tokens, list(opening)
        )
        self.ids, self.settled = [rid], len(attempts)
        return stored

    async def record_failure(self, records: Sequence[CallRecord]) -> None:
        """The call failed for good: record its attempts, settle the reservation."""
        with anyio.CancelScope(shield=True):  # paid attempts are recorded, whatever comes
            await self.store.write(_record_tx, self, self.unrecorded(records))

    async def unsettle(self, why: str) -> None:
        """Charge the reservation as an *unsettled* call (its answer is not recorded)."""
        with anyio.CancelScope(shield=True):
            await self.store.write(_unsettle_tx, self.settings, self.ids, why)


def _record_tx(conn: Connection, held: Reservation, records: Sequence[CallRecord]) -> list[int]:
    """Record a call's attempts and settle the reservation held for it."""
    return ledger.record(conn, held.ctx, records, held.settings, extra_reservations=held.ids)


def _next_attempt_tx(
    conn: Connection,
    held: Reservation,
    failed: Sequence[CallRecord],
    model_name: str,
    max_tokens: int,
    opening: list[ChatMessage],
) -> tuple[int, list[StoredMessage]]:
    """Record failed attempts, settling what they held, and reserve the next attempt on the
    day it is sent; the first one also stores a new task's opening messages (while this
    worker owns the task)."""
    stored = _append_tx(conn, held.task_id, held.worker_id, opening, 0) if opening else []
    if stored is None:
        raise LeaseLost(held.task_id)
    _record_tx(conn, held, failed)
    model = held.settings.models[model_name]
    estimate = held.prompt_estimate
    rid = ledger.reserve(
        conn,
        held.ctx,
        model=model_name,
        provider=model.provider,
        tokens=estimate + max_tokens,
        cost=model.cost(estimate, 0, max_tokens),
        budget=held.budget,
        workspace_budget=held.workspace_budget,
        day=ledger.day_of(queue.now(), held.settings.tz),
    )
    return rid, stored


def _unsettle_tx(
    conn: Connection, settings: Settings, reservations: Sequence[int], why: str
) -> None:
    for rid in reservations:
        ledger.settle_unsettled(conn, settings, rid, f"{why}; charged with the reserved estimate")


State = tuple[list[StoredMessage], int]  # a task's transcript and how many children it made


def load_state(conn: Connection, task: Task) -> State:
    """The task's transcript and how many sub-tasks it has created (one read). A task that
    has taken no model step yet has delegated nothing: its children are not counted."""
    children = queue.count_children(conn, task.id) if task.steps else 0
    return load_transcript(conn, task.id), children


def claim(
    conn: Connection, worker_id: int, lease_s: float, limit: int = 1, *, run_id: int | None = None
) -> list[tuple[Task, State]]:
    """Lease runnable tasks (``queue.claim``) and read each one's state in the same
    transaction, so a runner starts without a read of its own."""
    claimed = queue.claim(conn, worker_id, lease_s, limit, run_id=run_id)
    return [(task, load_state(conn, task)) for task in claimed]


def _append_tx(
    conn: Connection, task_id: int, worker_id: int, msgs: list[ChatMessage], first_seq: int
) -> list[StoredMessage] | None:
    """Append to the transcript of a task this worker still owns (None when it does not);
    ``first_seq`` comes from the runner's copy, which the lease keeps true."""
    if not queue.touch(conn, task_id, worker_id):
        return None
    return append_messages(conn, task_id, msgs, first_seq=first_seq)


def _persist_step_tx(
    conn: Connection,
    task: Task,
    worker_id: int,
    held: Reservation,
    records: Sequence[CallRecord],
    message: ChatMessage,
    seq: int,
) -> list[StoredMessage] | None:
    """Ledger rows always (the call was paid for); the transcript only while we own the task
    (None when we no longer do). A final answer completes the task in the same statement
    that counts the step."""
    ids = _record_tx(conn, held, records)
    try:
        if message.tool_calls:
            if not queue.touch(conn, task.id, worker_id, steps_delta=1):
                return None
        else:
            queue.complete(conn, task.id, worker_id, message.content or "", step=True)
    except LeaseLost:
        return None
    call_id = ids[-1] if ids else None
    return append_messages(conn, task.id, [message], call_id=call_id, first_seq=seq)
