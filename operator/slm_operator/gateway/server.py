"""The gateway's HTTP server: an OpenAI-compatible API in front of the SLMRoutes' backends.

``/v1/chat/completions`` and ``/v1/completions`` (streamed or not), ``/v1/models`` (the models the caller may
use), ``/healthz`` and ``/metrics``. Per call: authenticate, read the body (413 above the size limit), resolve the
route for its ``model`` (404, 403), apply the caller's limits (429 with ``Retry-After``), pick the backend
(:mod:`slm_operator.routing`), fire shadow copies off the call's path, hold the call while its backend is an
SLMDeployment at zero replicas that scales from zero (:mod:`slm_operator.routing.activation`), attempt, fall back
once if the route says so, then record metrics and hand a capture record to the capture queue after the answer
is on its way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from slm_operator.capture import Capture, CaptureRecord, caller_hash, reassemble_chat_stream, sampled
from slm_operator.contract import TASK_HEADER
from slm_operator.gateway.auth import ApiKeyAuth, Authenticator, AuthError, Caller, identity_for
from slm_operator.gateway.call import CHAT, COMPLETIONS, Call, Outcome, response_headers
from slm_operator.gateway.dispatch import Dispatcher, QueueFull
from slm_operator.gateway.metrics import GatewayMetrics
from slm_operator.gateway.tallies import Tallies
from slm_operator.gateway.upstream import Upstream
from slm_operator.routing.activation import holds, unactivated
from slm_operator.routing.compare import compare_answers
from slm_operator.routing.fallback import FailureReason, fallback_for
from slm_operator.routing.features import call_task, request_features
from slm_operator.routing.limits import CallerState, admit, idle, settle
from slm_operator.routing.rules import select, task_label
from slm_operator.routing.sse import join_completion_stream, sse_events
from slm_operator.routing.table import CompiledRoute, RouteTable, resolve

log = logging.getLogger("slm_operator.gateway")

DEFAULT_MAX_REQUEST_BYTES = 8 << 20
#: shadow copies in flight at most; more are skipped (counted), never queued
MAX_SHADOWS = 64
#: how often idle per-caller limit states are forgotten (seconds)
LIMITS_SWEEP_SECONDS = 60.0
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class Refused(Exception):
    """A call refused before routing, with the status and the message the caller reads."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error_response(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in the OpenAI API's shape: ``{"error": {"message", "type", "code"}}``."""
    kind = _ERROR_TYPES.get(status, "upstream_error")
    body = {"error": {"message": message, "type": kind, "code": code or kind}}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


@dataclass
class GatewayOptions:
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    salt: bytes = b""  # for the caller hash in capture records
    seed: int | None = None  # of the random draws (splits, shadows); tests fix it


class Gateway:
    """The server's state: the routing table (swapped whole when it changes), slots, limits, capture."""

    def __init__(
        self,
        table: RouteTable,
        *,
        auth: Authenticator | None = None,
        capture: Capture | None = None,
        metrics: GatewayMetrics | None = None,
        options: GatewayOptions | None = None,
    ) -> None:
        self.options = options or GatewayOptions()
        self.auth: Authenticator = auth or ApiKeyAuth()
        self.capture = capture
        self.metrics = metrics or GatewayMetrics()
        self.dispatcher = Dispatcher()
        self.metrics.load_from(self.dispatcher)
        self.tallies = Tallies(self.metrics)  # per rule with promote: what the promotion decides on
        self.rng = random.Random(self.options.seed)
        self.limits: dict[tuple[str, str], CallerState] = {}
        self._shadows: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._upstream: Upstream | None = None
        self._sweeper: asyncio.Task[None] | None = None
        #: scale from zero: told (namespace, SLMDeployment name) when a call is held for it (in the cluster:
        #: the activation annotation, ``gateway.activator``); None: nobody to tell (``gateway -f``)
        self.activator: Callable[[str, str], None] | None = None
        self.ready = True  # /readyz: the in-cluster mode clears it until its watches have listed everything
        self.table = RouteTable()
        self.set_table(table)

    # ---------------------------------------------------------------------------------------- set-up

    def set_table(self, table: RouteTable) -> None:
        """Serve ``table`` from now on (calls in flight finish on the routes they started with)."""
        self.table = table
        self.tallies.follow(table)
        self.dispatcher.index(
            (f"{r.key}/{b.name}", b) for r in table.routes.values() for b in r.backends.values()
        )
        for r in table.routes.values():
            for b in r.backends.values():
                self.metrics.child(self.metrics.endpoints_ready, r.key, b.name).set(len(b.ready_endpoints))
            if r.spec.task_classifier is not None:
                self.metrics.child(self.metrics.classifier_loaded, r.key).set(r.classifier is not None)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_request_bytes)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),  # a backend's cookies must never reach another caller's call
        )
        self._upstream = Upstream(self._session, self.dispatcher, self.metrics)
        self._sweeper = asyncio.create_task(self._sweep_limits())
        if self.capture is not None:
            await self.capture.start()

    async def _stop(self, _app: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._shadows):
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self.capture is not None:
            await self.capture.stop()

    async def _sweep_limits(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LIMITS_SWEEP_SECONDS)
            now = loop.time()
            for key, state in list(self.limits.items()):
                route = self.table.routes.get(key[0])
                if route is None or idle(state, route.spec.limits, now):
                    del self.limits[key]

    # ---------------------------------------------------------------------------------------- small endpoints

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _request: web.Request) -> web.Response:
        if not self.ready:
            return web.Response(
                status=503, text="waiting for the routes, deployments and endpoints to be listed\n"
            )
        return web.Response(text="ok\n")

    async def metrics_endpoint(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def models(self, request: web.Request) -> web.Response:
        """The models the caller may use, one per route (``owned_by`` names the route)."""
        table = self.table
        try:
            caller = await self.auth.authenticate(request.headers.get("Authorization"), table)
        except AuthError as exc:
            self.metrics.child(self.metrics.rejected, str(exc.status)).inc()
            return error_response(exc.status, str(exc))
        data = []
        try:
            for model, routes in sorted(table.by_model.items()):
                for r in routes:
                    if await self.auth.may_use(caller, r):
                        data.append({"id": model, "object": "model", "created": 0, "owned_by": r.key})
                        break
        except AuthError as exc:
            return error_response(exc.status, str(exc))
        return web.json_response({"object": "list", "data": data})

    # ---------------------------------------------------------------------------------------- calls

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, CHAT)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, COMPLETIONS)

    async def _handle(self, request: web.Request, path: str) -> web.StreamResponse:
        try:
            call = await self._admit(request, path)
        except (AuthError, Refused) as exc:
            self.metrics.child(self.metrics.rejected, str(exc.status)).inc()
            headers = exc.headers if isinstance(exc, Refused) else None
            return error_response(exc.status, str(exc), headers=headers)
        return await self._serve(call)

    async def _admit(self, request: web.Request, path: str) -> Call:
        """Authenticate, read and parse the body, find the route, apply the caller's limits."""
        started = asyncio.get_running_loop().time()
        started_wall = time.time()
        table = self.table
        caller = await self.auth.authenticate(request.headers.get("Authorization"), table)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Refused(413, f"the request is larger than {self.options.max_request_bytes} bytes") from None
        body = _parse_body(raw)
        route = await self._route(caller, body["model"], table)
        limits = route.spec.limits
        if (
            limits is not None
            and limits.max_request_bytes is not None
            and len(raw) > limits.max_request_bytes
        ):
            raise Refused(
                413, f"the request is larger than the route's limit of {limits.max_request_bytes} bytes"
            )
        task = self._task(request.headers.get(TASK_HEADER) or None, body, route)
        features = request_features(body, task)
        identity = identity_for(caller, route)
        call = Call(
            request=request,
            path=path,
            body=body,
            route=route,
            caller=caller,
            identity=identity,
            task=task,
            task_label=task_label(route.spec, task),
            features=features,
            started=started,
            started_wall=started_wall,
        )
        if limits is not None:
            key = (route.key, identity)
            adm = admit(self.limits.get(key, CallerState()), limits, started, features.prompt_tokens)
            self.limits[key] = adm.state
            if not adm.admitted:
                self.metrics.child(self.metrics.rate_limited, route.key, adm.limit).inc()
                raise Refused(
                    429,
                    f"the caller's {adm.limit} per minute on route {route.key} are used up; retry in "
                    f"{adm.retry_after_header} s",
                    {"Retry-After": adm.retry_after_header},
                )
            call.charged_tokens = features.prompt_tokens
        return call

    def _task(self, header: str | None, body: dict[str, Any], route: CompiledRoute) -> str | None:
        """The call's task (the header, else the route's classifier's tag), counting what the classifier found."""
        if header is not None or route.spec.task_classifier is None:
            return header
        try:
            task = call_task(header, body, route.classifier)
        except Exception:  # a classifier must never break a call
            log.exception("the task classifier of %s failed; the call has no task", route.key)
            task = None
        self.metrics.child(self.metrics.classifier_tags, route.key, task or "").inc()
        return task

    async def _route(self, caller: Caller, model: Any, table: RouteTable) -> CompiledRoute:
        if not isinstance(model, str) or not model:
            raise Refused(400, "the request must name a `model`")
        allowed = {r.key for r in table.by_model.get(model, ()) if await self.auth.may_use(caller, r)}
        res = resolve(table, model, lambda r: r.key in allowed, caller.namespace)
        if res.route is None:
            raise Refused(res.status, res.message)
        return res.route

    async def _serve(self, call: Call) -> web.StreamResponse:
        spec = call.route.spec
        sel = select(spec, call.features, self.rng.random(), self.rng.random(), call.route.phases)
        if sel.phase is not None:
            call.rule, call.phase, call.measured = sel.rule, sel.phase, sel.measured
            call.promoted_from = sel.promoted_from
        if sel.shadows:
            call.primary_answer = asyncio.get_running_loop().create_future()
            self._fire_shadows(call, sel.shadows)
        try:
            return await self._answer_call(call, sel.backend)
        finally:
            if call.primary_answer is not None and not call.primary_answer.done():
                call.primary_answer.set_result(None)  # the call failed: nothing to compare with

    async def _answer_call(self, call: Call, backend: str) -> web.StreamResponse:
        rate = call.route.sample_rate
        if self.capture is not None and rate > 0:
            call.record_id = uuid.uuid4().hex
            call.capture = sampled(call.record_id, rate)
        assert self._upstream is not None, "the gateway's app is not started"
        outcome = await self._hold(call, backend)
        if outcome is None:
            outcome = await self._upstream.attempt(call, backend)
        if outcome.reason is not None and outcome.committed is None:
            fb = fallback_for(call.route.spec, backend, outcome.reason, call.promoted_from)
            if fb is not None:
                reason = outcome.reason
                self.metrics.child(self.metrics.fallbacks, call.route.key, backend, reason.value).inc()
                log.debug(
                    "%s: %s failed (%s: %s), falling back to %s",
                    call.route.key,
                    backend,
                    reason,
                    outcome.detail,
                    fb,
                )
                outcome = await self._upstream.attempt(call, fb, reason)
                outcome.fallback = reason
        if call.promoted_from is not None and call.rule is not None and call.phase is not None:
            fell_back = outcome.fallback is not None
            self.tallies.served(call.route, call.rule, call.phase, fell_back)
        response = outcome.committed or self._response(call, outcome)
        self._finish(call, outcome, response.status)
        if call.primary_answer is not None and not call.primary_answer.done():
            clean = not (outcome.reason or outcome.fallback or outcome.cut) and response.status < 400
            call.primary_answer.set_result(_answer_of(call, outcome) if clean else None)
        return response

    async def _hold(self, call: Call, name: str) -> Outcome | None:
        """Scale from zero: hold a call whose backend autoscales from zero and has no ready replica until the
        routing table shows one (then None: the call goes on, on the table's current route), at most the route's
        ``timeouts.activation``; the activator tells the SLMDeployment at once. The outcome of a call that
        cannot wait (``maxQueue`` calls wait already) or waited in vain."""
        backend = call.route.backends.get(name)
        if backend is None or not holds(backend):
            return None
        key = f"{call.route.key}/{name}"
        deployment = f"{call.route.namespace}/{backend.model}"
        if self.activator is not None:
            self.activator(call.route.namespace, backend.model)
        until = asyncio.get_running_loop().time() + call.route.activation_s
        try:
            async with asyncio.timeout_at(until):
                await self.dispatcher.hold(key, backend)
        except QueueFull as exc:
            return Outcome(
                name, 503, reason=FailureReason.OVERLOAD, detail=str(exc), headers={"Retry-After": "1"}
            )
        except TimeoutError:
            self.metrics.child(self.metrics.activation_waits, call.route.key, name, "timeout").inc()
            answer = unactivated(deployment, call.route.spec.timeouts.activation)
            return Outcome(
                name,
                answer.status,
                reason=FailureReason.SCALED_TO_ZERO,
                detail=answer.detail,
                headers={"Retry-After": answer.retry_after},
            )
        self.metrics.child(self.metrics.activation_waits, call.route.key, name, "ready").inc()
        call.warming = (name, until)
        current = self.table.routes.get(call.route.key)
        if current is not None and name in current.backends:
            call.route = current  # the table that shows the ready replica
        return None

    def _response(self, call: Call, outcome: Outcome) -> web.Response:
        headers = response_headers(call, outcome.backend, outcome.fallback)
        headers.update(outcome.headers)
        if outcome.body:
            headers["Content-Type"] = outcome.content_type
            return web.Response(status=outcome.status, body=outcome.body, headers=headers)
        code = outcome.reason.value if outcome.reason else None
        return error_response(outcome.status, f"backend {outcome.backend}: {outcome.detail}", code, headers)

    def _finish(self, call: Call, outcome: Outcome, status: int) -> None:
        """Metrics, the token charge's correction and the capture hand-off, once the answer is decided."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        prompt, completion = _tokens(call, outcome, status)
        ttft = outcome.ttft if outcome.ttft is not None else now - call.started
        key = call.route.key
        self.metrics.observe_call(
            key, outcome.backend, call.task_label, status, now - call.started, ttft, prompt, completion
        )
        if outcome.cut:
            self.metrics.child(self.metrics.streams_cut, key, outcome.backend, outcome.cut).inc()
        limits = call.route.spec.limits
        state = self.limits.get((key, call.identity))
        if limits is not None and state is not None:
            self.limits[(key, call.identity)] = settle(
                state, limits, now, call.charged_tokens, prompt + completion
            )
        if call.capture:
            loop.call_soon(self._record, call, outcome, status, now, prompt, completion)

    def _record(
        self, call: Call, outcome: Outcome, status: int, ended: float, prompt: int, completion: int
    ) -> None:
        """Build the capture record and hand it over (called soon after the answer, off the call's path)."""
        capture, spec = self.capture, call.route.spec.capture
        if capture is None:
            return
        try:
            answer = _answer_of(call, outcome)
            usage = outcome.usage or {}
            record = CaptureRecord(
                id=call.record_id,
                time=datetime.fromtimestamp(call.started_wall, UTC),
                route=call.route.key,
                task=call.task,
                backend=outcome.backend,
                model=str(call.body.get("model")),
                request=call.body,
                response=answer,
                stream=call.features.stream,
                status=status,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                ttft_ms=None if outcome.ttft is None else outcome.ttft * 1000,
                total_ms=(ended - call.started) * 1000,
                fallback_reason=outcome.fallback.value if outcome.fallback else None,
                caller=caller_hash(call.identity, self.options.salt),
                redact=[c.value for c in spec.redact] if spec else [],
            )
            accepted = capture.submit(record)
        except Exception:  # capture must never break a call
            log.exception("capture of a call on %s failed", call.route.key)
            accepted = False
        self.metrics.child(self.metrics.captured, call.route.key, "true" if accepted else "false").inc()

    # ---------------------------------------------------------------------------------------- shadows

    def _fire_shadows(self, call: Call, names: tuple[str, ...]) -> None:
        for name in names:
            if len(self._shadows) >= MAX_SHADOWS:
                self.metrics.child(self.metrics.shadows, call.route.key, name, "skipped").inc()
                continue
            task = asyncio.create_task(self._shadow(call, name))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

    async def _shadow(self, call: Call, name: str) -> None:
        """A copy of a call to ``name``, not streamed, off the call's path (it only takes a free slot); its
        answer is compared with the one the caller got (``routing.compare``) and then dropped."""
        route = call.route
        backend = route.backends[name]
        key = f"{route.key}/{name}"
        url = self.dispatcher.try_acquire(key, backend)
        if url is None or self._session is None:
            self.metrics.child(self.metrics.shadows, route.key, name, "skipped").inc()
            return
        copy = {k: v for k, v in call.body.items() if k != "stream_options"}
        copy.update(model=backend.model, stream=False)
        headers = {"Content-Type": "application/json"}
        if backend.api_key:
            headers["Authorization"] = f"Bearer {backend.api_key}"
        outcome, answer = "error", None
        try:
            async with asyncio.timeout(route.total_s):
                async with self._session.post(
                    url + call.path, data=json.dumps(copy).encode(), headers=headers
                ) as resp:
                    data = await resp.read()
                    outcome = "ok" if resp.status < 400 else "error"
                    answer = _json_or_none(data) if resp.status < 400 else None
        except (TimeoutError, aiohttp.ClientError):
            pass
        finally:
            self.dispatcher.release(key, url)
            self.metrics.child(self.metrics.shadows, route.key, name, outcome).inc()
        await self._compare(call, name, answer)

    async def _compare(self, call: Call, name: str, answer: dict[str, Any] | None) -> None:
        """Count how the shadow's answer agrees with the caller's (none counted when the caller's failed or
        came from a fallback, or does not come within the route's total timeout)."""
        if call.primary_answer is None:
            return
        try:
            async with asyncio.timeout(call.route.total_s):
                primary = await asyncio.shield(call.primary_answer)
        except TimeoutError:
            return
        if primary is None:
            return
        result = compare_answers(primary, answer)
        self.metrics.child(
            self.metrics.shadow_agreement, call.route.key, name, call.task_label, result.value
        ).inc()
        if name == call.measured and call.rule is not None and call.phase is not None:
            self.tallies.compared(call.route, call.rule, call.phase, result.agrees)


def _answer_of(call: Call, outcome: Outcome) -> dict[str, Any] | None:
    """The answer of an attempt as one JSON object: parsed, reassembled from the kept stream, or None."""
    answer = outcome.answer
    if answer is None and outcome.stream_bytes is not None:
        events = sse_events(outcome.stream_bytes)
        answer = reassemble_chat_stream(events) if call.path == CHAT else join_completion_stream(events)
    if answer is None and outcome.body:
        answer = _json_or_none(outcome.body)
    return answer


def _json_or_none(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise Refused(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Refused(400, "the request must name a `model`")
    return body


def _tokens(call: Call, outcome: Outcome, status: int) -> tuple[int, int]:
    """(prompt, completion) tokens of an answered call: the backend's usage, else the gateway's estimates."""
    if status != 200:
        return 0, 0
    usage = outcome.usage or {}
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else call.features.prompt_tokens,
        completion if isinstance(completion, int) else outcome.completion_estimate,
    )
