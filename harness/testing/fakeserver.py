"""A fake OpenAI-compatible server (aiohttp) for tests, chaos runs and benchmarks.

Endpoints: ``POST /v1/chat/completions`` (JSON, or SSE when ``stream`` is true, with a usage
event when ``stream_options.include_usage`` is set), ``GET /v1/models``, ``GET /stats``,
``GET /requests`` (the request log below) and ``POST /reset`` (zero the counters and the log,
rewind the schedule, re-seed the RNG; an optional JSON body of :class:`FakeConfig` fields
changes those knobs). In-process, ``async with FakeServer(cfg) as server:``
(``server.base_url``); as a subprocess, ``python -m harness.testing.fakeserver --port 0
--ttft-s 0.05 --p-429 0.1`` (every FakeConfig field is a flag) prints ``listening HOST:PORT``
as its first stdout line.

Answers: ``completion_tokens`` words (capped by ``max_tokens``: ``finish_reason`` "length"),
or one call to a tool when tools are offered and ``tool_choice`` is "required" or names a
function (``tool_calls="always"``: unless the choice is "none"; "never": never), its
arguments made by :func:`fake_arguments`; or, for a ``json_schema``/``json_object`` response
format, a JSON document by the same rules for its schema (default ``{"answer": <words>}``).
Usage: prompt = request body bytes // 4, completion = words sent (JSON: pieces of 4
characters; a tool call: argument bytes // 4 + 1).

Each call's outcome, in arrival order: from ``schedule`` while it lasts (forever with
``repeat_schedule``), then by seeded probability: ``429`` (with ``Retry-After``), ``500``,
``malformed`` (a truncated JSON body or a broken SSE event), ``no_usage``, ``cut`` (the
connection drops half-way through the body or stream: no ``finish_reason``, no ``[DONE]``),
``stall`` (silence for ``stall_s``, then the connection drops).

Counting (``GET /stats``): a call is *received* once its request body is read and *served*
once the last byte of its response was handed to the socket (``write_eof`` returned without
a connection error); ``cut`` and ``stall`` calls are never served, and a call whose client
left before the end is *aborted*. ``completions`` = served ``ok`` + ``no_usage``: the only
responses a client can accept as a successful completion, so no client can have recorded more
successful calls than ``completions``.

The request log (``GET /requests``, the first ``LOG_LIMIT`` requests since the last reset): for
each ``/models`` and ``/chat/completions`` request, when its headers arrived and when it was
served (``time.time()``, so a client on the same machine can compare its own clock; ``served``
is null for a call never served), its path and the client's port (one port per connection: a
new port is a new connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from itertools import accumulate, cycle
from typing import Any

from aiohttp import web

__all__ = ["FakeConfig", "FakeServer", "Outcome", "fake_arguments", "main"]


class Outcome(StrEnum):
    OK = "ok"
    NO_USAGE = "no_usage"
    RATE_LIMITED = "429"
    SERVER_ERROR = "500"
    MALFORMED = "malformed"
    CUT = "cut"
    STALL = "stall"


FAULTS = list(Outcome)[1:]
ERRORS = (Outcome.RATE_LIMITED, Outcome.SERVER_ERROR)
_TEXT = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
_DENSE = re.compile(r"[A-Za-z]{1,3}|[0-9]|[^\sA-Za-z0-9]")
LOG_LIMIT = 10_000  # requests kept in the request log (a long benchmark keeps only the first)
MAX_TOKENS = 8192  # longest answer; ``completion_tokens`` above it is capped
_TOKENS = [(" " if i else "") + w for i, w in zip(range(MAX_TOKENS), cycle(_TEXT.split()))]
_DELTAS = [b'{"content":"' + t.encode() + b'"}' for t in _TOKENS]  # plain words: no escaping


@dataclass(frozen=True)
class FakeConfig:
    """The server's behaviour. Times in seconds; probabilities per call, summing to <= 1."""

    model: str = "fake-model"
    ttft_s: float = 0.0  # time to first token
    ttft_jitter_s: float = 0.0  # plus uniform [0, jitter) drawn from the seeded RNG
    token_delay_s: float = 0.0  # between tokens
    completion_tokens: int = 16
    tool_calls: str = "required"  # "required", "always" or "never"
    seed: int = 0
    p_429: float = 0.0
    p_500: float = 0.0
    p_malformed: float = 0.0
    p_no_usage: float = 0.0
    p_cut: float = 0.0
    p_stall: float = 0.0
    retry_after_s: float = 1.0
    stall_s: float = 60.0
    schedule: tuple[str, ...] = field(default=())
    repeat_schedule: bool = False
    api_key: str = ""  # when set, a request without "Authorization: Bearer <it>" gets a 401
    models: tuple[str, ...] = ()  # the model ids it knows (listed; others get a 404); () any
    # a prompt (body bytes // 4) above this many tokens is refused as too long (0: never), in
    # the shape of "openai", "llamacpp" (llama.cpp's server) or "vllm"; /models and /props
    # report the window the way those servers do
    context_window: int = 0
    overflow_style: str = "openai"
    # how prompts are counted: "bytes" (the request body's bytes // 4) or "dense" (a denser
    # tokenizer than harness's estimate: each digit and punctuation mark is a token, letters
    # go in threes, plus 4 per message), for measuring how estimates follow a real server
    tokenizer: str = "bytes"

    def __post_init__(self) -> None:
        if self.tool_calls not in ("required", "always", "never"):
            raise ValueError(f"tool_calls must be required, always or never: {self.tool_calls!r}")
        if sum(self.probabilities()) > 1.0 + 1e-9:
            raise ValueError("fault probabilities add up to more than 1")
        if self.overflow_style not in ("openai", "llamacpp", "vllm"):
            raise ValueError(f"overflow_style: openai, llamacpp or vllm: {self.overflow_style!r}")
        if self.tokenizer not in ("bytes", "dense"):
            raise ValueError(f"tokenizer: bytes or dense: {self.tokenizer!r}")
        # a list is accepted too; an unknown outcome is a ValueError
        object.__setattr__(self, "schedule", tuple(Outcome(s).value for s in self.schedule))
        object.__setattr__(self, "models", tuple(self.models))

    def probabilities(self) -> list[float]:
        """The fault probabilities in the order of ``FAULTS``."""
        return [self.p_no_usage, self.p_429, self.p_500, self.p_malformed, self.p_cut, self.p_stall]


def fake_arguments(schema: dict[str, Any], text: str = "", index: int = 0) -> dict[str, Any]:
    """An object valid for a simple JSON schema: its required properties (all when it lists
    none), each its default or const, the first ``anyOf`` branch, the ``index``-th enum value
    (cycling), ``minItems`` items (the k-th item with index k, so a fan-out of calls picks
    different enum values), 1 for numbers, ``text`` for a string named ``answer`` and
    ``"fake <name>"`` for other strings."""
    props: dict[str, Any] = schema.get("properties") or {}
    required = schema.get("required")
    names = [n for n in props if n in required] if isinstance(required, list) else list(props)
    return {name: _fake_value(name, props[name] or {}, text, index) for name in names}


def _fake_value(name: str, spec: dict[str, Any], text: str, index: int) -> Any:
    for key in ("default", "const"):
        if key in spec:
            return spec[key]
    if spec.get("enum"):
        return spec["enum"][index % len(spec["enum"])]
    if spec.get("anyOf") or spec.get("oneOf"):
        return _fake_value(name, (spec.get("anyOf") or spec["oneOf"])[0], text, index)
    kind = spec.get("type", "object" if "properties" in spec else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return fake_arguments(spec, text, index)
    if kind == "array":
        items = spec.get("items") or {}
        return [_fake_value(name, items, text, k) for k in range(spec.get("minItems", 0))]
    if kind == "string":
        return text if name == "answer" and text else f"fake {name}"
    return {"integer": 1, "number": 1, "boolean": False}.get(kind)


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _Answer:
    """One call's answer, rendered as a JSON body or as SSE events."""

    def __init__(self, server: FakeServer, body: dict[str, Any], prompt_tokens: int) -> None:
        self.model = str(body.get("model") or server.config.model)
        self.id = f"chatcmpl-fake-{server.next_id()}"
        cap = body.get("max_tokens") or body.get("max_completion_tokens")
        n = server.config.completion_tokens
        self.finish = "stop"
        if isinstance(cap, int) and 0 < cap < n:
            n, self.finish = cap, "length"
        self.tokens = _TOKENS[:n]
        self.deltas = _DELTAS[:n]
        self.call: dict[str, Any] | None = None
        tool = _pick_tool(body, server.config.tool_calls)
        fmt = body.get("response_format") or {}
        if fmt.get("type") in ("json_schema", "json_object") and tool is None:
            # grammar-constrained (llama.cpp); llama-cpp-python: {"type": "json_object", "schema"}
            schema = fmt.get("schema") or (fmt.get("json_schema") or {}).get("schema")
            schema = schema or {"properties": {"answer": {}}}
            content = json.dumps(_fake_value("answer", schema, "".join(self.tokens), 0))
            self.tokens = [content[i : i + 4] for i in range(0, len(content), 4)]
            self.deltas = [b'{"content":' + _dump(t) + b"}" for t in self.tokens]
            n, self.finish = len(self.tokens), "stop"
        elif tool is not None:
            args = json.dumps(fake_arguments(tool.get("parameters") or {}))
            fn = {"name": tool.get("name", ""), "arguments": args}
            self.call = {"id": f"call_{server.next_id(True)}", "type": "function", "function": fn}
            self.tokens, self.deltas, self.finish = [], [], "tool_calls"
            n = len(args) // 4 + 1
        self.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                      "total_tokens": prompt_tokens + n}  # fmt: skip

    def body(self, usage: bool) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.tokens) or None}
        if self.call is not None:
            message["tool_calls"] = [self.call]
        choice = {"index": 0, "message": message, "finish_reason": self.finish}
        out = {**self._head("chat.completion"), "choices": [choice]}
        return _dump(out | {"usage": self.usage} if usage else out)

    def _event(self, delta: bytes, finish: bytes = b"null") -> bytes:
        # SSE events are assembled from bytes: the hot path of streamed benchmarks
        choice = b'[{"index":0,"delta":' + delta + b',"finish_reason":' + finish + b"}]"
        return self._pre + choice + b"}\n\n"

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": 0, "model": self.model}

    def events(self) -> list[bytes]:
        """Generated output: the role event, then one per token or the tool call."""
        self._pre = b"data: " + _dump(self._head("chat.completion.chunk"))[:-1] + b',"choices":'
        out = [self._event(b'{"role":"assistant","content":""}')]
        out += [self._event(d) for d in self.deltas]
        if self.call is not None:
            out.append(self._event(_dump({"tool_calls": [{"index": 0, **self.call}]})))
        return out

    def tail(self, usage: bool) -> bytes:
        """The finish event, the usage event (if asked) and ``[DONE]`` (after ``events``)."""
        out = self._event(b"{}", _dump(self.finish))
        if usage:
            out += self._pre + b'[],"usage":' + _dump(self.usage) + b"}\n\n"
        return out + b"data: [DONE]\n\n"


def _pick_tool(body: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """The function spec to call, or None for a text answer."""
    tools = body.get("tools") if mode != "never" else None
    specs = [t.get("function") or {} for t in tools or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((s for s in specs if s.get("name") == wanted), None)
    forced = choice == "required" or (mode == "always" and choice != "none")
    return specs[0] if specs and forced else None


class FakeServer:
    """The server: configuration, counters and the aiohttp application. One event loop."""

    def __init__(
        self, config: FakeConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._ids = 0  # never reset: ids stay unique for the server's life
        self._tag = secrets.token_hex(3)  # and differ from another server's
        self.in_flight = 0  # not reset: calls in flight stay in flight
        self.reset(config or FakeConfig())

    def reset(self, config: FakeConfig | None = None) -> None:
        """Zero the counters, rewind the schedule and re-seed the RNG (optionally new knobs)."""
        if config is not None:
            self.config = config
        self._rng = random.Random(self.config.seed)
        self._index = 0
        faults = [(o, p) for o, p in zip(FAULTS, self.config.probabilities(), strict=True) if p]
        edges = accumulate(p for _, p in faults)
        self._cumulative = [(edge, o) for edge, (o, _) in zip(edges, faults, strict=True)]
        self.received = dict.fromkeys(Outcome, 0)
        self.served = dict.fromkeys(Outcome, 0)
        self.aborted = 0
        self.refused = 0  # requests answered 401, 404 or "too long" (never a completion)
        self.log: list[dict[str, Any]] = []
        self._logged: dict[int, dict[str, Any]] = {}  # calls in progress, by id(request)

    def stats(self) -> dict[str, Any]:
        """Counters as served by ``GET /stats`` (see the module docstring for definitions)."""
        by = {o.value: {"received": self.received[o], "served": self.served[o]} for o in Outcome}
        return {"received": sum(self.received.values()), "served": sum(self.served.values()),
                "completions": self.served[Outcome.OK] + self.served[Outcome.NO_USAGE],
                "aborted": self.aborted, "in_flight": self.in_flight, "refused": self.refused,
                "by_outcome": by}  # fmt: skip

    def _arrived(self, request: web.Request) -> dict[str, Any] | None:
        """Log a request's arrival (while the log has room): its entry, to set ``served``."""
        if len(self.log) >= LOG_LIMIT:
            return None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        port = peer[1] if isinstance(peer, tuple) and len(peer) > 1 else None
        entry = {"arrived": time.time(), "served": None, "path": request.path, "port": port}
        self.log.append(entry)
        return entry

    def next_id(self, tagged: bool = False) -> str:
        self._ids += 1
        return f"{self._tag}_{self._ids}" if tagged else str(self._ids)

    def _outcome(self) -> Outcome:
        i, cfg = self._index, self.config
        self._index += 1
        if cfg.schedule and (i < len(cfg.schedule) or cfg.repeat_schedule):
            return Outcome(cfg.schedule[i % len(cfg.schedule)])
        if self._cumulative:
            r = self._rng.random()
            for threshold, outcome in self._cumulative:
                if r < threshold:
                    return outcome
        return Outcome.OK

    def _ttft(self) -> float:
        jitter = self.config.ttft_jitter_s
        return self.config.ttft_s + (self._rng.random() * jitter if jitter else 0.0)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for prefix in ("", "/v1"):  # with or without /v1, for any base URL
            app.router.add_post(prefix + "/chat/completions", self._chat)
            app.router.add_get(prefix + "/models", self._models)
            app.router.add_get(prefix + "/props", self._props)
            app.router.add_get(prefix + "/stats", self._stats)
            app.router.add_get(prefix + "/requests", self._requests)
            app.router.add_post(prefix + "/reset", self._reset)
        return app

    async def start(self) -> FakeServer:
        """Listen on ``host:port`` (port 0: a free one, then stored in ``port``)."""
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def _models(self, request: web.Request) -> web.Response:
        entry = self._arrived(request)
        refused = self._refuse_key(request)
        if refused is not None:
            return refused
        data = []
        for model_id in self.config.models or (self.config.model,):
            item: dict[str, Any] = {"id": model_id, "object": "model", "owned_by": "fake"}
            if self.config.context_window and self.config.overflow_style == "vllm":
                item["max_model_len"] = self.config.context_window
            data.append(item)
        if entry is not None:
            entry["served"] = time.time()  # (near enough: the listing is small)
        return web.json_response({"object": "list", "data": data})

    async def _props(self, request: web.Request) -> web.Response:
        if not self.config.context_window or self.config.overflow_style != "llamacpp":
            return web.json_response({"error": "not found"}, status=404)
        n_ctx = self.config.context_window
        return web.json_response({"default_generation_settings": {"n_ctx": n_ctx}})

    def _refuse_key(self, request: web.Request) -> web.Response | None:
        if not self.config.api_key:
            return None
        if request.headers.get("Authorization") == f"Bearer {self.config.api_key}":
            return None
        error = {"message": "Incorrect API key provided", "type": "invalid_request_error",
                 "code": "invalid_api_key"}  # fmt: skip
        return web.json_response({"error": error}, status=401)

    def _refuse(
        self, request: web.Request, body: dict[str, Any], raw: bytes
    ) -> web.Response | None:
        """A 401, a 404 for an unknown model, or a 400 for a prompt past the window."""
        refused = self._refuse_key(request)
        if refused is not None:
            return refused
        model = body.get("model")
        if self.config.models and model not in self.config.models:
            error = {"message": f"The model `{model}` does not exist",
                     "type": "invalid_request_error", "code": "model_not_found"}  # fmt: skip
            return web.json_response({"error": error}, status=404)
        prompt, window = self._prompt_tokens(body, raw), self.config.context_window
        if window and prompt > window:
            return web.json_response(
                _overflow(self.config.overflow_style, prompt, window), status=400
            )
        return None

    def _prompt_tokens(self, body: dict[str, Any], raw: bytes) -> int:
        if self.config.tokenizer == "bytes":
            return len(raw) // 4
        parts = [json.dumps(body.get("tools") or [])]
        for m in body.get("messages") or []:
            parts.append(str(m.get("content") or ""))
            parts += [json.dumps(c.get("function") or {}) for c in m.get("tool_calls") or []]
        text = "\n".join(parts)
        return len(_DENSE.findall(text)) + 4 * len(body.get("messages") or []) + 3

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.log})

    async def _reset(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            changes = json.loads(raw) if raw.strip() else {}
            config = replace(self.config, **changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        self.reset(config)
        return web.json_response({"config": asdict(self.config)})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        entry = self._arrived(request)
        if entry is not None:
            self._logged[id(request)] = entry  # ``_finish`` sets ``served``
        try:
            return await self._completion(request)
        finally:
            self._logged.pop(id(request), None)

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return web.json_response({"error": {"message": "not a JSON object"}}, status=400)
        refused = self._refuse(request, body, raw)
        if refused is not None:
            self.refused += 1
            return refused
        outcome = self._outcome()
        self.received[outcome] += 1
        self.in_flight += 1
        try:
            answer = _Answer(self, body, max(self._prompt_tokens(body, raw), 1))
            return await self._respond(request, body, outcome, answer)
        except ConnectionError:
            self.aborted += 1
            return web.Response()
        finally:
            self.in_flight -= 1

    async def _error(self, request: web.Request, outcome: Outcome) -> web.StreamResponse:
        msg, status = {"message": "internal error (fake)", "type": "server_error"}, 500
        headers = {}
        if outcome is Outcome.RATE_LIMITED:
            msg, status = {"message": "rate limited (fake)", "type": "rate_limit_error"}, 429
            headers = {"Retry-After": f"{self.config.retry_after_s:g}"}
        resp = web.json_response({"error": msg}, status=status, headers=headers)
        return await self._finish(request, resp, outcome)

    async def _finish(
        self, request: web.Request, resp: web.StreamResponse, outcome: Outcome, data: bytes = b""
    ) -> web.StreamResponse:
        """Write the rest of the response and count the call as served."""
        if not resp.prepared:
            await resp.prepare(request)
        await resp.write_eof(data)
        self.served[outcome] += 1
        entry = self._logged.get(id(request))
        if entry is not None:
            entry["served"] = time.time()
        return resp

    async def _respond(
        self, request: web.Request, body: dict[str, Any], outcome: Outcome, answer: _Answer
    ) -> web.StreamResponse:
        if outcome is Outcome.STALL:
            await asyncio.sleep(self.config.stall_s)
            if request.transport is not None:
                request.transport.close()  # no response at all
            return web.Response()
        ttft, delay = self._ttft(), self.config.token_delay_s
        stream = bool(body.get("stream")) and outcome not in ERRORS
        if not stream:  # the whole answer is generated before anything is sent
            wait = ttft if outcome in ERRORS else ttft + delay * len(answer.tokens)
            if wait > 0:
                await asyncio.sleep(wait)
            if outcome in ERRORS:
                return await self._error(request, outcome)
            data = answer.body(outcome is not Outcome.NO_USAGE)
            if outcome is Outcome.MALFORMED:
                data = data[: len(data) // 2]
            if outcome is not Outcome.CUT:  # (a Response sends headers and body together)
                whole = web.Response(body=data, content_type="application/json")
                return await self._finish(request, whole, outcome)
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(data)  # announced in full, then cut
            parts = [data[: len(data) // 2]]
        else:
            events = answer.events()
            if outcome is Outcome.MALFORMED:
                events = [events[0], b'data: {"choices":[{"delta":{"content":"tru\n\n']
            elif outcome is Outcome.CUT:
                events = events[: max(len(events) // 2, 1)]
            else:
                wants = bool((body.get("stream_options") or {}).get("include_usage"))
                events.append(answer.tail(wants and outcome is not Outcome.NO_USAGE))
            parts = events if delay > 0 else [b"".join(events)]
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, part in enumerate(parts):
            pause = (ttft if i == 0 else delay if i > 1 else 0.0) if stream else 0.0
            if pause > 0:
                await asyncio.sleep(pause)
            if i < len(parts) - 1 or outcome is Outcome.CUT:
                await resp.write(part)
        if outcome is Outcome.CUT and request.transport is not None:
            request.transport.close()  # part of the body, then the connection drops
            return resp
        return await self._finish(request, resp, outcome, parts[-1])


def _overflow(style: str, prompt: int, window: int) -> dict[str, Any]:
    """A context-overflow error body, as each server family writes it."""
    text = (
        f"This model's maximum context length is {window} tokens. However, you requested "
        f"{prompt} tokens. Please reduce the length of the messages."
    )
    if style == "llamacpp":
        return {"error": {"code": 400, "message": "the request exceeds the available context size",
                          "type": "exceed_context_size_error", "n_prompt_tokens": prompt,
                          "n_ctx": window}}  # fmt: skip
    if style == "vllm":
        return {"object": "error", "message": text, "type": "BadRequestError", "param": None,
                "code": 400}  # fmt: skip
    return {"error": {"message": text, "type": "invalid_request_error", "param": "messages",
                      "code": "context_length_exceeded"}}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m harness.testing.fakeserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    for f in fields(FakeConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("schedule", "models"):
            parser.add_argument(flag, default="", help="comma-separated, e.g. 429,ok")
        elif isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    return parser


async def _serve(server: FakeServer) -> None:
    await server.start()
    sys.stdout.write(f"listening {server.host}:{server.port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the server until SIGTERM/SIGINT; the first stdout line is ``listening HOST:PORT``."""
    args = _parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(FakeConfig)}
    for name in ("schedule", "models"):
        values[name] = [s.strip() for s in values[name].split(",") if s.strip()]
    server = FakeServer(FakeConfig(**values), host=args.host, port=args.port)
    asyncio.run(_serve(server))


if __name__ == "__main__":
    main()
