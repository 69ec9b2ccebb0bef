"""The model client: OpenAI-compatible chat completions with retries, pacing and fallbacks.

:class:`OpenAIProvider` answers a :class:`~harness.messages.ChatRequest` for any configured
model. Per call:

1. the requested model is tried, then each of its ``fallbacks`` in order (only the requested
   model's list; a fallback's own fallbacks are not followed). A model is abandoned for the
   next one after any final failure, retryable or not (a 401 or 404 on one provider says
   nothing about another);
2. on each model, attempts are retried here and only here: connection errors,
   timeouts, idle or cut streams, 408/409/429/5xx, and malformed bodies. Other statuses
   (400, 401, 403, 404, 422...) are final at once. Malformed bodies are retried at most
   ``FORMAT_ATTEMPTS - 1`` times per model: a flaky server recovers, a wrong endpoint never;
3. backoff is exponential with jitter (``backoff_base_s``, ``backoff_max_s``) unless the server
   sent ``Retry-After``. Pacing is the transport's: a 429 (or any ``Retry-After``) pauses every
   call to that provider (see :mod:`.transport` and :mod:`.pacing`); this module only decides
   whether and when to try again, and which model next.

Every attempt that reached a server yields a :class:`~harness.usage.CallRecord`, failed ones
included, and they all travel with the result: on :attr:`Completion.records`, or on
:attr:`ProviderError.records <harness.errors.ProviderError>` when everything failed. A
successful call never records zero tokens: missing usage is estimated (``estimated=True``).
Models configured ``tools = "json"`` get their tools through ``response_format``
(:mod:`.jsontools`). API keys appear in no log event, error message or record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from ..errors import ConfigError, ControlSignal, ProviderError, ResponseFormatError
from ..messages import ChatMessage, ChatRequest, WireUsage
from ..settings import ModelConfig, Settings
from ..usage import CallOutcome, CallRecord, Usage
from . import jsontools
from .base import Attempts, Completion
from .pacing import Clock, Sleep, backoff_delay
from .tokens import estimate_completion_tokens, estimate_prompt_tokens
from .transport import AttemptError, ProviderClient, Reply, TransportFactory

__all__ = ["FORMAT_ATTEMPTS", "OpenAIProvider", "usage_from_wire"]

FORMAT_ATTEMPTS = 3  # malformed replies tolerated from one model before moving on

log = structlog.get_logger("harness.provider")


def usage_from_wire(wire: WireUsage | None, prompt_estimate: int, message: ChatMessage) -> Usage:
    """The usage to record for a successful call; estimated where the server sent none.

    A server reporting nothing, or zero for both counts, is replaced by estimates (the
    call did cost something); a single missing count is estimated on its own.
    """
    prompt = wire.prompt_tokens if wire else None
    completion = wire.completion_tokens if wire else None
    if not prompt and not completion:
        prompt = completion = None
    estimated = prompt is None or completion is None
    if prompt is None:
        prompt = prompt_estimate
    if completion is None:
        completion = estimate_completion_tokens(message)
    prompt_details = wire.prompt_tokens_details if wire else None
    completion_details = wire.completion_tokens_details if wire else None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=(prompt_details.cached_tokens or 0) if prompt_details else 0,
        reasoning_tokens=(completion_details.reasoning_tokens or 0) if completion_details else 0,
        estimated=estimated,
    )


@dataclass
class _Call:
    """One model's share of a call: what is sent, and how its attempts went."""

    name: str
    config: ModelConfig
    client: ProviderClient
    request: ChatRequest  # as sent (after the JSON-tools encoding, if any)
    payload: dict[str, Any]
    stream: bool
    prompt_estimate: int
    records: list[CallRecord]  # shared across the whole fallback chain
    format_failures: int = 0
    attempts: int = 0
    hooks: Attempts | None = None

    @property
    def reserve(self) -> int:
        return self.prompt_estimate + int(self.payload["max_tokens"])


class _ModelFailed(Exception):
    def __init__(self, call: _Call, error: AttemptError) -> None:
        super().__init__(error.message)
        self.call = call
        self.error = error


class OpenAIProvider:
    """Implements :class:`Provider` for every provider and model in ``settings``.

    ``transport_factory(provider_name, provider_config)`` replaces the HTTP transport (tests
    pass an ``httpx.MockTransport``); ``sleep`` and ``clock`` drive backoff and pacing.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport_factory: TransportFactory | None = None,
        sleep: Sleep = anyio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self._factory = transport_factory
        self._sleep = sleep
        self._clock = clock
        self._clients: dict[str, ProviderClient] = {}
        self._secrets = {key for p in settings.providers.values() if (key := p.api_key())}

    def client(self, provider: str) -> ProviderClient:
        """The shared client (pool, limiter, pacer) of one configured provider."""
        if provider not in self._clients:
            if provider not in self.settings.providers:
                raise ConfigError(f"unknown provider {provider!r} (not under [providers])")
            self._clients[provider] = ProviderClient(
                provider,
                self.settings.providers[provider],
                transport_factory=self._factory,
                sleep=self._sleep,
                clock=self._clock,
                secrets=self._secrets,
            )
        return self._clients[provider]

    async def aclose(self) -> None:
        """Close every connection pool. The provider may be used again afterwards."""
        for client in list(self._clients.values()):
            await client.aclose()

    def chain(self, model: str) -> list[str]:
        """The model names tried for ``model``, in order: itself, then its fallbacks."""
        if model not in self.settings.models:
            raise ConfigError(f"unknown model {model!r} (not under [models] in the settings)")
        names = [model]
        for name in self.settings.models[model].fallbacks:
            if name not in names and name in self.settings.models:
                names.append(name)
        return names

    async def complete(
        self, request: ChatRequest, *, attempts: Attempts | None = None
    ) -> Completion:
        """Answer ``request``; raise ProviderError once every model in the chain failed."""
        records: list[CallRecord] = []
        failure: _ModelFailed | None = None
        for name in self.chain(request.model):
            call = self._prepare(name, request, records)
            call.hooks = attempts
            if failure is not None:
                log.warning(
                    "model_fallback",
                    from_model=failure.call.name,
                    from_provider=failure.call.client.name,
                    status=failure.error.status,
                    model=name,
                    provider=call.client.name,
                )
            try:
                return await self._run(call)
            except _ModelFailed as exc:
                failure = exc
        assert failure is not None
        raise self._final_error(failure, records, request.model)

    def _prepare(self, name: str, request: ChatRequest, records: list[CallRecord]) -> _Call:
        config = self.settings.models[name]
        client = self.client(config.provider)
        try:
            sent = jsontools.encode_request(request) if config.tools == "json" else request
        except ValueError as exc:  # e.g. tool_choice names a tool the request does not carry
            raise ProviderError(
                f"cannot send tools to model {name!r} as JSON: {exc}",
                provider=config.provider,
                model=name,
                records=records,
            ) from None
        stream = client.config.stream if request.stream is None else request.stream
        payload = sent.payload(config.id, stream=stream)
        payload.setdefault("max_tokens", config.max_tokens)
        if "response_format" in payload:
            payload["response_format"] = jsontools.wire_format(
                payload["response_format"], config.schema_format
            )
        return _Call(
            name=name,
            config=config,
            client=client,
            request=sent,
            payload=payload,
            stream=stream,
            prompt_estimate=request.prompt_estimate or estimate_prompt_tokens(sent),
            records=records,
        )

    async def _run(self, call: _Call) -> Completion:
        """Attempts on one model until one succeeds or the retry policy gives up.

        A plain loop rather than a retry library: this is every call's hot path, and the
        policy is small (retry a retryable AttemptError until ``_should_stop``, waiting
        ``delay_s``). Anything else, cancellation included, propagates at once. A retry is
        announced to the caller's hooks (the failure recorded, the retry reserved) before the
        backoff: a call cancelled while it waits holds only a reservation that never left.
        """
        number = 0
        while True:
            number += 1
            if number == 1:
                await self._before(call)
            try:
                return await self._attempt(call, number)
            except AttemptError as exc:
                if not exc.retryable or self._should_stop(call, number):
                    log.warning(
                        "model_call_failed",
                        provider=call.client.name,
                        model=call.name,
                        status=exc.status,
                        attempt=call.attempts,
                        kind=exc.kind,
                        error=exc.message,
                    )
                    raise _ModelFailed(call, exc) from None
                delay = exc.delay_s or 0.0
                self._log_retry(call, number, exc, delay)
            await self._before(call)
            await self._sleep(delay)

    @staticmethod
    async def _before(call: _Call) -> None:
        """The caller's hook before an attempt: it may shrink ``max_tokens`` to the budget
        left (the attempt then asks for no more), or stop the call."""
        if call.hooks is None:
            return
        asked = int(call.payload["max_tokens"])
        try:
            granted = await call.hooks.before(
                call.name, list(call.records), prompt_tokens=call.prompt_estimate, max_tokens=asked
            )
        except ControlSignal as signal:
            signal.records = list(call.records)  # type: ignore[attr-defined]
            raise
        call.payload["max_tokens"] = min(granted, asked)

    async def _attempt(self, call: _Call, number: int) -> Completion:
        call.attempts = number
        sending = call.hooks.sending if call.hooks is not None else None
        try:
            reply = await call.client.send(
                call.payload, stream=call.stream, tokens=call.reserve, on_send=sending
            )
        except AttemptError as exc:
            call.format_failures += exc.kind == "format"
            self._backoff(call, number, exc)
            if exc.reached_server:
                call.records.append(self._error_record(call, number, exc))
            raise
        return self._success(call, number, reply)

    def _success(self, call: _Call, number: int, reply: Reply) -> Completion:
        message = reply.message
        if jsontools.is_encoded(call.request):
            try:
                message = jsontools.decode_reply(message, strict=True)
            except ValueError as exc:
                # e.g. cut at max_tokens: the tokens were spent, the reply is unusable
                error = AttemptError(
                    f"reply does not follow the tool schema: {exc}",
                    kind="format",
                    retryable=True,
                    status=reply.status,
                    body=(message.content or "")[:500],
                )
                error.latency_ms = reply.latency_ms
                error.usage = usage_from_wire(reply.usage, call.prompt_estimate, message)
                raise error from None
        usage = usage_from_wire(reply.usage, call.prompt_estimate, message)
        call.records.append(
            CallRecord(
                provider=call.client.name,
                model=call.name,
                outcome=CallOutcome.OK,
                usage=usage,
                latency_ms=reply.latency_ms,
                ttft_ms=reply.ttft_ms,
                attempt=number,
                status=reply.status,
            )
        )
        return Completion(message, reply.finish_reason, usage, call.name, list(call.records))

    @staticmethod
    def _error_record(call: _Call, number: int, exc: AttemptError) -> CallRecord:
        return CallRecord(
            provider=call.client.name,
            model=call.name,
            outcome=CallOutcome.ERROR,
            latency_ms=exc.latency_ms,
            ttft_ms=exc.ttft_ms,
            attempt=number,
            status=exc.status,
            error=exc.message,
            usage=exc.usage or Usage(),
        )

    # -- the retry policy ------------------------------------------------------------

    @staticmethod
    def _should_stop(call: _Call, number: int) -> bool:
        """Give up on this model after failed attempt ``number``?"""
        if call.format_failures >= FORMAT_ATTEMPTS:
            return True
        return number > call.client.config.max_retries

    @staticmethod
    def _backoff(call: _Call, number: int, exc: AttemptError) -> None:
        """Decide the wait after failed attempt ``number``: the pause the transport set after a
        429 or ``Retry-After`` (every call to the provider waits the same), else exponential
        backoff with jitter."""
        if exc.delay_s is not None:  # the transport paused the provider for this long
            return
        config = call.client.config
        exc.delay_s = backoff_delay(number, config.backoff_base_s, config.backoff_max_s)

    @staticmethod
    def _log_retry(call: _Call, number: int, error: AttemptError, delay: float) -> None:
        log.warning(
            "model_call_retry",
            provider=call.client.name,
            model=call.name,
            attempt=number,
            status=error.status,
            kind=error.kind,
            error=error.message,
            delay_s=round(delay, 3),
        )

    @staticmethod
    def _final_error(
        failure: _ModelFailed, records: list[CallRecord], requested: str
    ) -> ProviderError:
        call, error = failure.call, failure.error
        cls = ResponseFormatError if error.kind == "format" else ProviderError
        role = "" if call.name == requested else f" (fallback for {requested!r})"
        detail = f"{error.message}: {error.body[:200]}" if error.body else error.message
        message = (
            f"model {call.name!r} on provider {call.client.name!r}{role} failed"
            f" after {call.attempts} attempt(s): {detail}"
        )
        return cls(
            message,
            provider=call.client.name,
            model=call.name,
            status=error.status,
            body=error.body,
            retryable=error.retryable,
            records=list(records),
            kind=error.kind,
        )
