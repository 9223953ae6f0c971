"""Attempts on a backend: a slot from the dispatcher, the request, retries before the first byte, the answer.

Retries happen only before the backend's first byte: a refused or reset connection is tried again on another
endpoint (``RETRIES`` times). Once the backend has answered, what follows is the fallback's business
(:mod:`slm_operator.routing.fallback`). A streamed answer is forwarded chunk by chunk from its first chunk on;
until that first chunk nothing has reached the caller, so a failure before it can still fall back. When the route
falls back on ``InvalidJSON`` and the call asks for JSON, a streamed answer is held until it is complete and
checked, then sent at once (the price of being able to fall back on it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from slm_operator.capture import reassemble_chat_stream
from slm_operator.gateway.call import CHAT, Call, Outcome, response_headers
from slm_operator.gateway.dispatch import Dispatcher, NoEndpoint, QueueFull
from slm_operator.gateway.metrics import GatewayMetrics
from slm_operator.routing.fallback import FailureReason, failure_of_status
from slm_operator.routing.jsoncheck import expects_json, json_problem
from slm_operator.routing.sse import body_usage, count_data_events, sse_events, stream_usage
from slm_operator.routing.table import Backend

RETRIES = 2
#: pause between connection attempts on a replica that has just become ready and does not accept yet
WARMING_RETRY_S = 0.1
#: bytes of a stream's end kept to find its usage
TAIL_BYTES = 8192
#: largest streamed answer kept for capture (larger ones are captured without their answer)
MAX_CAPTURED_STREAM = 8 << 20


def _json_or_none(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _warming(call: Call, name: str, first_deadline: float) -> bool:
    """Whether a refused connection to backend ``name`` is tried again after a pause: the call was held for that
    backend's first replica, which the EndpointSlice shows Ready, and neither wait (``timeouts.activation``,
    ``timeouts.firstByte``) is over. A Ready replica whose server does not accept yet is a start-up race
    (Knative's activator probes a new pod for the same reason), not a failure to fall back on."""
    if call.warming is None or call.warming[0] != name:
        return False
    return asyncio.get_running_loop().time() + WARMING_RETRY_S < min(call.warming[1], first_deadline)


class Upstream:
    """Sends attempts to backends through one HTTP client session (keep-alive connections per endpoint)."""

    def __init__(
        self, session: aiohttp.ClientSession, dispatcher: Dispatcher, metrics: GatewayMetrics
    ) -> None:
        self.session = session
        self.dispatcher = dispatcher
        self.metrics = metrics
        self._urls: dict[tuple[str, str], URL] = {}

    def _url(self, base: str, path: str) -> URL:
        """The parsed URL of ``base + path``, parsed once."""
        url = self._urls.get((base, path))
        if url is None:
            if len(self._urls) > 10000:
                self._urls.clear()
            url = self._urls[(base, path)] = URL(base + path)
        return url

    def _payload(self, call: Call, backend: Backend) -> tuple[bytes, dict[str, str]]:
        headers = {"Content-Type": "application/json"}
        if backend.api_key:
            headers["Authorization"] = f"Bearer {backend.api_key}"
        body = dict(call.body)
        body["model"] = backend.model
        return json.dumps(body, separators=(",", ":")).encode(), headers

    async def _slot(self, key: str, backend: Backend, tried: frozenset[str], deadline: float) -> str:
        """A free slot at once, else a wait in the backend's queue until ``deadline``."""
        url = self.dispatcher.try_acquire(key, backend, tried)
        if url is not None:
            return url
        async with asyncio.timeout_at(deadline):
            return await self.dispatcher.acquire(key, backend, tried)

    async def attempt(self, call: Call, name: str, fallback: FailureReason | None = None) -> Outcome:
        """One backend's answer to the call, after retries before the first byte."""
        backend = call.route.backends[name]
        payload, headers = self._payload(call, backend)
        loop = asyncio.get_running_loop()
        start = loop.time()
        first_deadline = start + call.route.first_byte_s
        total_deadline = start + call.route.total_s
        tried: set[str] = set()
        key = f"{call.route.key}/{name}"
        retries = 0
        warming = False
        while True:
            if warming:
                await asyncio.sleep(WARMING_RETRY_S)
            try:
                url = await self._slot(key, backend, frozenset(tried), first_deadline)
            except TimeoutError:
                return Outcome(
                    name, 504, reason=FailureReason.TIMEOUT, detail="no free slot within timeouts.firstByte"
                )
            except QueueFull as exc:
                return Outcome(
                    name, 503, reason=FailureReason.OVERLOAD, detail=str(exc), headers={"Retry-After": "1"}
                )
            except NoEndpoint as exc:
                return Outcome(name, 502, reason=FailureReason.ERROR, detail=str(exc))
            tried.add(url)
            try:
                try:
                    async with asyncio.timeout_at(first_deadline):
                        resp = await self.session.post(
                            self._url(url, call.path), data=payload, headers=headers
                        )
                except TimeoutError:
                    return Outcome(
                        name,
                        504,
                        reason=FailureReason.TIMEOUT,
                        detail=f"no answer within {call.route.spec.timeouts.first_byte}",
                    )
                except aiohttp.ClientConnectionError as exc:
                    warming = isinstance(exc, aiohttp.ClientConnectorError) and _warming(
                        call, name, first_deadline
                    )
                    if warming:
                        tried.discard(url)  # nothing was sent: the same replica again, once it accepts
                        continue
                    if retries < RETRIES:
                        retries += 1
                        self.metrics.child(self.metrics.retries, call.route.key, name).inc()
                        continue
                    return Outcome(
                        name, 502, reason=FailureReason.ERROR, detail=f"{url}: {exc or type(exc).__name__}"
                    )
                try:
                    return await self._answer(call, name, resp, first_deadline, total_deadline, fallback)
                finally:
                    resp.release()
            finally:
                self.dispatcher.release(key, url)

    async def _answer(
        self,
        call: Call,
        name: str,
        resp: aiohttp.ClientResponse,
        first_deadline: float,
        total_deadline: float,
        fallback: FailureReason | None,
    ) -> Outcome:
        streamed = call.features.stream and resp.status == 200
        if not streamed:
            return await self._whole(call, name, resp, total_deadline)
        if call.path == CHAT and call.checks_json(name) and expects_json(call.body):
            return await self._held_stream(call, name, resp, first_deadline, total_deadline, fallback)
        return await self._stream(call, name, resp, first_deadline, total_deadline, fallback)

    async def _whole(self, call: Call, name: str, resp: aiohttp.ClientResponse, deadline: float) -> Outcome:
        """A non-streamed answer (or any answer that is not a 200 stream), read whole."""
        try:
            async with asyncio.timeout_at(deadline):
                body = await resp.read()
        except TimeoutError:
            return Outcome(
                name,
                504,
                reason=FailureReason.TIMEOUT,
                detail=f"the answer took longer than {call.route.spec.timeouts.total}",
            )
        except aiohttp.ClientError as exc:
            return Outcome(
                name,
                502,
                reason=FailureReason.ERROR,
                detail=f"the answer was cut short: {exc or type(exc).__name__}",
            )
        out = Outcome(
            name, resp.status, body=body, content_type=resp.headers.get("Content-Type", "application/json")
        )
        retry_after = resp.headers.get("Retry-After")
        if retry_after:
            out.headers["Retry-After"] = retry_after
        out.reason = failure_of_status(resp.status)
        if out.reason is not None:
            out.detail = f"the backend answered {resp.status}"
            return out
        if resp.status == 200:
            checked = call.path == CHAT and call.checks_json(name) and expects_json(call.body)
            if checked or call.keeps_answer:  # the whole answer is needed; otherwise only its usage
                out.answer = _json_or_none(body)
                usage = out.answer.get("usage") if out.answer else None
                out.usage = usage if isinstance(usage, dict) else None
            else:
                out.usage = body_usage(body)
            if checked:
                problem = (
                    "the answer is not JSON" if out.answer is None else json_problem(call.body, out.answer)
                )
                if problem:
                    out.reason, out.detail = FailureReason.INVALID_JSON, problem
        return out

    async def _first_chunk(self, resp: aiohttp.ClientResponse, deadline: float) -> bytes:
        """The stream's first chunk (b"" when it ends at once); TimeoutError past ``deadline``."""
        async with asyncio.timeout_at(deadline):
            async for chunk in resp.content.iter_any():
                if chunk:
                    return chunk
        return b""

    async def _held_stream(
        self,
        call: Call,
        name: str,
        resp: aiohttp.ClientResponse,
        first_deadline: float,
        total_deadline: float,
        fallback: FailureReason | None,
    ) -> Outcome:
        """A streamed answer held until complete, checked for JSON, then sent at once (or failed)."""
        try:
            first = await self._first_chunk(resp, first_deadline)
            async with asyncio.timeout_at(total_deadline):
                body = first + await resp.read()
        except TimeoutError:
            return Outcome(
                name, 504, reason=FailureReason.TIMEOUT, detail="the streamed answer did not finish in time"
            )
        except aiohttp.ClientError as exc:
            return Outcome(
                name,
                502,
                reason=FailureReason.ERROR,
                detail=f"the stream was cut short: {exc or type(exc).__name__}",
            )
        answer = reassemble_chat_stream(sse_events(body))
        problem = json_problem(call.body, answer)
        ctype = resp.headers.get("Content-Type", "text/event-stream")
        if problem:
            return Outcome(
                name, 200, body=body, content_type=ctype, reason=FailureReason.INVALID_JSON, detail=problem
            )
        out = web.StreamResponse(
            status=200, headers={"Content-Type": ctype, **response_headers(call, name, fallback)}
        )
        loop = asyncio.get_running_loop()
        outcome = Outcome(name, 200, committed=out, answer=answer, usage=answer.get("usage"))
        outcome.completion_estimate = count_data_events(body)[0]
        try:
            await out.prepare(call.request)
            outcome.ttft = loop.time() - call.started
            await out.write(body)
            await out.write_eof()
        except ConnectionResetError:
            outcome.cut = "client"
        return outcome

    async def _stream(
        self,
        call: Call,
        name: str,
        resp: aiohttp.ClientResponse,
        first_deadline: float,
        total_deadline: float,
        fallback: FailureReason | None,
    ) -> Outcome:
        """A streamed answer passed through chunk by chunk, from its first chunk on."""
        try:
            first = await self._first_chunk(resp, first_deadline)
        except TimeoutError:
            return Outcome(
                name,
                504,
                reason=FailureReason.TIMEOUT,
                detail=f"no first chunk within {call.route.spec.timeouts.first_byte}",
            )
        except aiohttp.ClientError as exc:
            return Outcome(
                name,
                502,
                reason=FailureReason.ERROR,
                detail=f"the stream failed before its first chunk: {exc or type(exc).__name__}",
            )
        if not first:
            return Outcome(name, 502, reason=FailureReason.ERROR, detail="the backend's stream was empty")
        ctype = resp.headers.get("Content-Type", "text/event-stream")
        out = web.StreamResponse(
            status=200, headers={"Content-Type": ctype, **response_headers(call, name, fallback)}
        )
        outcome = Outcome(name, 200, committed=out)
        kept = bytearray() if call.keeps_answer else None
        try:
            await out.prepare(call.request)
            outcome.ttft = asyncio.get_running_loop().time() - call.started
            await self._pump(resp, out, first, total_deadline, outcome, kept)
        except ConnectionResetError:
            outcome.cut = "client"
        if kept is not None and len(kept) <= MAX_CAPTURED_STREAM:
            outcome.stream_bytes = bytes(kept)
        return outcome

    async def _pump(
        self,
        resp: aiohttp.ClientResponse,
        out: web.StreamResponse,
        chunk: bytes,
        deadline: float,
        outcome: Outcome,
        kept: bytearray | None,
    ) -> None:
        """Forward ``chunk`` and the rest of the stream; a backend failure now ends the stream with an error event."""
        events, carry, tail = 0, b"\n", b""
        more = resp.content.iter_any().__aiter__()
        try:
            async with asyncio.timeout_at(deadline):
                while chunk:
                    await out.write(chunk)
                    n, carry = count_data_events(chunk, carry)
                    events += n
                    tail = (tail + chunk)[-TAIL_BYTES:]
                    if kept is not None and len(kept) <= MAX_CAPTURED_STREAM:
                        kept += chunk
                    chunk = await anext(more, b"")
        except TimeoutError:
            outcome.cut = "timeout"
        except aiohttp.ClientError:
            outcome.cut = "error"
        outcome.usage = stream_usage(tail)
        outcome.completion_estimate = max(events - 1, 0)  # every chunk but [DONE]
        if outcome.cut:
            message = {
                "error": {
                    "message": f"the backend's stream ended early ({outcome.cut})",
                    "type": "upstream_error",
                    "code": outcome.cut,
                }
            }
            await out.write(b"data: " + json.dumps(message).encode() + b"\n\n")
        await out.write_eof()
