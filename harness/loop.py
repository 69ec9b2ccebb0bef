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

import contextlib
import json
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
import structlog

from . import ledger, steps
from .agents import DELEGATE, AgentSpec
from .context import TaskContext, overflow
from .errors import (
    BudgetExceeded,
    ControlSignal,
    LeaseLost,
    ProviderError,
    RunFailed,
    ToolError,
    ToolsUnavailable,
)
from .messages import ChatMessage, ChatRequest, ToolCall, ToolSpec
from .provider import Completion
from .provider.jsontools import new_call_id
from .runtime import Runtime
from .settings import WorkerConfig
from .steps import Reservation, State, load_state
from .store import TERMINAL, TaskStatus, queue
from .store.queue import Lease, NewTask, Task
from .store.transcripts import StoredMessage
from .tools import ToolContext, delegate_spec, delegation
from .tools.builtin import NOTE_APPEND, READ_ARTIFACT

log = structlog.get_logger("harness.loop")


def pending_calls(transcript: Sequence[StoredMessage]) -> list[ToolCall]:
    """Tool calls of the last assistant message that have no tool result yet (looked for
    from the end: a long task's earlier turns are not walked again)."""
    answered: set[str | None] = set()
    for sm in reversed(transcript):
        if sm.message.role == "assistant":
            return [c for c in sm.message.tool_calls or [] if c.id not in answered]
        answered.add(sm.message.tool_call_id)
    return []


class TaskRunner:
    """Runs one claimed task until it finishes, waits, pauses or fails."""

    def __init__(self, rt: Runtime, task: Task, worker_id: int, state: State | None = None) -> None:
        self.rt = rt
        self.task = task
        self.worker_id = worker_id
        self.lease = Lease(task, worker_id)  # fences every write of this claim
        self.state = state  # read with the claim (see ``claim``), or here at the start
        self.log = log.bind(run_id=task.run_id, task_id=task.id, agent=task.agent)
        self.transcript: list[StoredMessage] = []
        self.unsaved: list[ChatMessage] = []  # the opening, stored with the first reservation
        self.n_children = 0  # sub-tasks created so far (the max_children limit)
        self.tokens = 0  # tokens this task's calls used (the max_task_tokens limit)
        self.overflowed = False  # this step's prompt was refused as too long, and compacted

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
            return await self._out_of_budget(exc)
        except RunFailed as exc:
            return await self._fail(exc.reason, retry=False)
        except (ProviderError, ToolsUnavailable) as exc:
            return await self._fail(str(exc), retry=exc.retryable)

    async def _run(self) -> TaskStatus:
        if self.state is None:
            self.state = await self.rt.store.read(load_state, self.task)
        await self.rt.tools.prepare(self.agent.tools)  # e.g. start an MCP server first used
        state = self.state
        self.transcript = list(state.transcript)
        self.n_children, self.tokens = state.children, state.tokens
        if not self.transcript:  # a new task: its opening is stored with its first call's
            self.unsaved = self._opening()  # reservation (one transaction fewer)
            t = queue.now()
            self.transcript += [StoredMessage(i, m, None, t) for i, m in enumerate(self.unsaved)]
        self.context = TaskContext(self.rt, self.lease, self.agent, self.transcript, state)
        self.tally = _Tally()
        for sm in self.transcript:
            self.tally.note(sm.message)
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
        prompt = self.agent.prompt
        if NOTE_APPEND in self.agent.tools:
            prompt += NOTES_HINT
        return [
            ChatMessage(role="system", content=prompt),
            ChatMessage(role="user", content=self.task.input),
        ]

    # -- model steps -----------------------------------------------------------------------

    def _next_seq(self) -> int:
        return self.transcript[-1].seq + 1 if self.transcript else 0

    def _steps_taken(self) -> int:
        return self.tally.steps

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
            messages=list(self.context.messages()),
            tools=tools or None,
            tool_choice=choice if tools else None,
            max_tokens=agent.max_tokens or settings.models[model].max_tokens,
            **agent.sampling(),
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
        if rounds is not None and self.tally.delegation_rounds() >= rounds:
            return []
        return list(self.agent.delegates_to)

    def _tool_offer(
        self, *, last_step: bool
    ) -> tuple[list[ToolSpec], str | dict[str, Any] | None, int | None]:
        """Tools for this step, stable order first (delegate, then by name), and tool_choice."""
        agent = self.agent
        targets = self._delegable()
        done = self.tally.delegated_to
        missing = agent.min_delegations - len(done & set(agent.delegates_to))
        descriptions = {
            n: self.rt.team[n].description for n in agent.delegates_to if n in self.rt.team
        }
        if missing > 0 and targets and not last_step:
            remaining = [t for t in targets if t not in done]
            # the one tool, named: every OpenAI-compatible server takes this form (some, like
            # llama-cpp-python's function calling, fail on "required")
            forced = {"type": "function", "function": {"name": DELEGATE}}
            return [delegate_spec(remaining, descriptions)], forced, missing
        specs = [delegate_spec(targets, descriptions)] if targets else []
        names = sorted({*agent.tools, *([READ_ARTIFACT] if self.context.artifacts else [])})
        specs += self.rt.tools.specs(names)
        if not specs:
            return [], None, None
        return specs, ("none" if last_step else agent.tool_choice), None

    async def _step(self) -> bool:
        """One model call: request (made to fit the window) -> reserve -> call -> persist.
        True when it answered (the task is then complete); False when it made tool calls
        (now pending), or when the server refused the prompt as too long and the context
        was compacted (the step is taken again, once)."""
        request = await self.context.fit(self._request())
        held = Reservation(
            self.rt.store,
            self.rt.settings,
            self.lease,
            self.agent,
            opening=self.unsaved,
            on_opening=self._opening_stored,
        )
        self.rt.emit("model_call", task_id=self.task.id, agent=self.agent.name, request=request)
        try:
            completion = await self.rt.provider.complete(request, attempts=held)
        except (ProviderError, ControlSignal) as exc:  # paid attempts are recorded all the same
            self.rt.emit("model_failed", task_id=self.task.id, agent=self.agent.name, error=exc)
            await held.record_failure(getattr(exc, "records", []))
            too_long = overflow(exc)
            if too_long is None or self.overflowed:
                raise
            self.overflowed = True  # compact to the window the server revealed, once
            await self.context.recover(request, too_long)
            return False
        except BaseException:
            # cancelled (shutdown, lost lease, cancelled run): charged with its estimate if it
            # may have reached the server, given back if it never left
            await held.unsettle("cancelled while in flight")
            raise
        await self._persist_step(held, completion)
        self.overflowed = False  # a later overflow is recovered once too
        self.context.answered(request, completion)
        self._count_tokens(completion)
        usage = completion.usage
        self.rt.emit(
            "model_done",
            task_id=self.task.id,
            agent=self.agent.name,
            usage=usage,
            completion=completion,
        )
        return not completion.message.tool_calls

    def _opening_stored(self, stored: list[StoredMessage]) -> None:
        self.transcript[: len(stored)] = stored
        self.unsaved = []

    async def _persist_step(self, held: Reservation, completion: Completion) -> None:
        message = ChatMessage(
            role="assistant",
            content=completion.message.content,
            tool_calls=self._fresh_ids(completion.message.tool_calls or []) or None,
        )
        records = held.unrecorded(completion.records)
        self._extend(await steps.persist_step(held, records, message, self._next_seq()))
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
        seen, fresh = self.tally.call_ids, set()
        out = []
        for call in calls:
            if call.id in seen or call.id in fresh or not call.id:
                call = call.model_copy(update={"id": new_call_id()})
            fresh.add(call.id)
            out.append(call)
        return out

    def _count_tokens(self, completion: Completion) -> None:
        """The task's tokens so far, against ``max_task_tokens``."""
        self.tokens += sum(r.usage.total_tokens for r in completion.records)
        limit = self.agent.max_task_tokens or self.rt.settings.limits.max_task_tokens
        if limit is not None and self.tokens > limit:
            raise RunFailed(
                f"agent {self.agent.name!r} used {self.tokens:,} tokens on this task, more "
                f"than max_task_tokens={limit:,}"
            )

    # -- acting on tool calls ----------------------------------------------------------------

    def _check_limits(self) -> None:
        """Loops (the same call ``loop_repeats`` times) and ``max_tool_calls``."""
        (name, args), n = self.tally.most_repeated
        if n >= self.rt.settings.limits.loop_repeats:
            raise RunFailed(
                f"loop detected: tool {name!r} was called {n} times "
                f"with the same arguments {args[:200]}"
            )
        limit = self.agent.max_tool_calls or self.rt.settings.limits.max_tool_calls
        if limit is not None and self.tally.tool_calls > limit:
            raise RunFailed(
                f"agent {self.agent.name!r} made {self.tally.tool_calls} tool calls on this "
                f"task, more than max_tool_calls={limit}"
            )

    async def _act(self, pending: list[ToolCall]) -> bool:
        """Execute pending tool calls; returns True when the task now waits for children."""
        self._check_limits()
        delegations = [c for c in pending if c.function.name == DELEGATE]
        results: list[ChatMessage] = []
        ctx = ToolContext(
            run_id=self.task.run_id,
            task_id=self.task.id,
            agent=self.task.agent,
            workdir=self.rt.workspace.var_dir / "runs" / str(self.task.run_id),
            settings=self.rt.settings,
            notes=self.rt.store,
            artifacts=self.rt.store,
        )
        allowed = {*self.agent.tools, READ_ARTIFACT}
        for call in pending:
            if call.function.name == DELEGATE:
                continue
            self.rt.emit("tool_start", task_id=self.task.id, tool=call.function.name, call=call)
            res = await self.rt.tools.call(
                call.function.name, call.function.arguments, ctx, allowed=allowed,
                max_chars=ARTIFACT_MAX_CHARS,
            )  # fmt: skip
            self.rt.emit("tool_done", task_id=self.task.id, tool=call.function.name, ok=res.ok)
            self.log.info("tool_called", tool=call.function.name, ok=res.ok)
            results.append(_tool_message(call, await self._keep(call, res.content)))
        if results:
            await self._append(results)
        if delegations:
            return await self._delegate(delegations)
        return False

    async def _delegate(self, calls: list[ToolCall]) -> bool:
        # children exist only if the task's state counted some: spawning is fenced by the claim,
        # and a task that spawned waits until they settle, then starts again from its state
        made = await self.rt.store.read(queue.children, self.task.id) if self.n_children else []
        kids = {c.parent_call_id: c for c in made}
        targets = set(self._delegable())
        room = self.rt.settings.limits.max_children - len(kids)
        results: list[ChatMessage] = []
        spawn: list[NewTask] = []
        for call in calls:
            child = kids.get(call.id)
            if child is not None and child.status in TERMINAL:
                results.append(_tool_message(call, await self._keep(call, _child_result(child))))
            elif child is not None:  # created before a crash, still running: wait for it
                spawn.append(NewTask(child.agent, child.input, call.id))
            else:
                try:
                    agent, task = delegation(call.function.arguments, targets, self.task.input)
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
        ids = await self.rt.store.write_until_done(queue.spawn_children, self.lease, spawn)
        self.log.info("task_delegated", children=ids)
        self.rt.emit("delegated", task_id=self.task.id, children=ids)
        return True

    async def _keep(self, call: ToolCall, content: str) -> str:
        """A result as the transcript holds it (a large one: its head and an artifact)."""
        return await self.context.keep(call, content, self.agent.model_name(self.rt.settings))

    # -- ends ----------------------------------------------------------------------------------

    async def _append(self, msgs: list[ChatMessage]) -> None:
        self._extend(await steps.append(self.rt.store, self.lease, msgs, self._next_seq()))

    def _extend(self, stored: list[StoredMessage]) -> None:
        self.transcript += stored
        for sm in stored:
            self.tally.note(sm.message)

    async def _complete(self, answer: str) -> TaskStatus:
        await self.rt.store.write_until_done(queue.complete, self.lease, answer)
        return self._done(answer)

    def _done(self, answer: str) -> TaskStatus:
        self.log.info("task_done", chars=len(answer))
        return TaskStatus.DONE

    async def _fail(self, reason: str, *, retry: bool) -> TaskStatus:
        backoff = retry_backoff(self.rt.settings.worker, self.task.attempts)
        try:
            with anyio.CancelScope(shield=True):  # a task's end is recorded, whatever comes
                status = await self.rt.store.write_until_done(
                    queue.fail, self.lease, reason, retry=retry, backoff_s=backoff
                )
        except LeaseLost:
            return TaskStatus.CANCELLED
        self.log.warning("task_failed", reason=reason, retry=status == TaskStatus.QUEUED)
        return status

    async def _out_of_budget(self, exc: BudgetExceeded) -> TaskStatus:
        """A refused call: larger than the whole budget (the task fails: it could never run),
        room held by calls in flight (it waits a little, no attempt charged), or the day's
        budget spent (it pauses until the next day or a budget change)."""
        if exc.impossible:
            hint = "raise the budget, or lower the agent's max_tokens or its task's size"
            return await self._fail(f"{exc}; {hint}", retry=False)
        try:
            if exc.waiting:
                delay = BUDGET_WAIT_S * (0.5 + random.random())
                why = f"waiting for budget held by calls in flight: {exc}"
                await self.rt.store.write_until_done(queue.release, self.lease, why, delay_s=delay)
                self.log.info("task_budget_wait", reason=str(exc), delay_s=round(delay, 2))
                return TaskStatus.QUEUED
            # the budget refused is the one of the day the call was reserved on: its end, not
            # the end of today (a refusal just after midnight must not wait an extra day)
            until = ledger.day_after_start(exc.day, self.rt.settings.tz)
            key = self.agent.budget_key(self.rt.settings)
            await self.rt.store.write_until_done(queue.pause, self.lease, str(exc), until, key)
        except LeaseLost:
            return TaskStatus.CANCELLED
        self.log.warning("task_paused", reason=str(exc))
        return TaskStatus.PAUSED


BUDGET_WAIT_S = 2.0  # a task refused for budget only held by calls in flight retries this soon


def retry_backoff(worker: WorkerConfig, attempts: int) -> float:
    """The wait before a failed task's next attempt: ``retry_backoff_s`` doubling per attempt,
    capped at ``retry_backoff_max_s``, with "equal jitter" (half fixed, half random) so that
    tasks failed together do not come back together."""
    ceiling = min(worker.retry_backoff_max_s, worker.retry_backoff_s * 2.0 ** max(attempts - 1, 0))
    return ceiling / 2 + random.random() * ceiling / 2


NOTES_HINT = (
    "\n\nIn a long task, older tool results are shortened and early turns summarised to fit "
    "your context window. Record with note_append whatever you must keep word for word."
)
ARTIFACT_MAX_CHARS = 4_000_000  # the most of one result kept at all (its artifact included)


class _Tally:
    """What the limits, the tool offer and fresh ids need of a transcript, counted as it
    grows (a long task does not walk its whole transcript on every step)."""

    def __init__(self) -> None:
        self.steps = 0  # assistant messages
        self.tool_calls = 0  # calls of tools other than delegate
        self.call_ids: set[str] = set()
        self.calls: Counter[tuple[str, str]] = Counter()  # (tool, arguments) -> times
        self.most_repeated: tuple[tuple[str, str], int] = (("", ""), 0)  # of ``calls``
        self.delegated_to: set[str] = set()  # the agents delegate calls named (valid or not)
        self._answered: set[str] = set()  # tool_call_id of every tool result
        self._delegating: dict[str, list[int]] = {}  # a delegate call's id -> its steps
        self._settled: set[int] = set()  # steps with a delegate call answered

    def note(self, message: ChatMessage) -> None:
        if message.tool_call_id:
            self._answered.add(message.tool_call_id)
            self._settled.update(self._delegating.get(message.tool_call_id, ()))
        if message.role != "assistant":
            return
        self.steps += 1
        for c in message.tool_calls or []:
            self.call_ids.add(c.id)
            key = (c.function.name, _canonical(c.function.arguments))
            self.calls[key] += 1
            if self.calls[key] > self.most_repeated[1]:
                self.most_repeated = (key, self.calls[key])
            if c.function.name != DELEGATE:
                self.tool_calls += 1
                continue
            self._delegating.setdefault(c.id, []).append(self.steps)
            if c.id in self._answered:
                self._settled.add(self.steps)
            with contextlib.suppress(ValueError, AttributeError):  # named no agent
                self.delegated_to.add(str(json.loads(c.function.arguments or "{}").get("agent")))

    def delegation_rounds(self) -> int:
        """Model steps whose delegations are settled (each may fan out to several
        sub-tasks). A step still being acted on does not count yet."""
        return len(self._settled)


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
