"""An OpenAI-compatible stand-in for vLLM: the one test double of the gateway's tests, benchmark and e2e scenarios.

It answers ``/v1/chat/completions`` and ``/v1/completions`` (streamed as server-sent events or not), ``/v1/models``
and ``/health`` at once, with a fixed answer naming the stand-in (``hello from NAME``), and usage counted in
words. Tests steer it through :class:`Behaviour` (status, delay, content, tool calls, a stream cut short) and read
the requests it received. Run one with ``python -m e2e.standin --listen 127.0.0.1:8001 --name extractor``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Behaviour:
    status: int = 200  # an error status answers with an OpenAI error body
    delay: float = 0.0  # seconds before the answer's headers
    content: str | None = None  # the answer's text (default: "hello from NAME")
    tool_calls: list[dict[str, Any]] | None = None  # answer with these tool calls instead of text
    chunks: int = 8  # chunks a streamed text answer is split into (at least 1)
    chunk_delay: float = 0.0  # seconds between streamed chunks
    cut_after: int | None = None  # a stream closes the connection after this many chunks
    retry_after: str | None = None  # Retry-After header on an error status


@dataclass
class StandIn:
    name: str = "standin"
    behaviour: Behaviour = field(default_factory=Behaviour)
    record: bool = True
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        return app

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "standin"}]}
        )

    async def _begin(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        body = json.loads(await request.read())
        if self.record:
            self.requests.append({"path": request.path, "body": body, "headers": dict(request.headers)})
        b = self.behaviour
        if b.delay:
            await asyncio.sleep(b.delay)
        if b.status != 200:
            error = {
                "error": {"message": f"{self.name} answers {b.status}", "type": "standin", "code": b.status}
            }
            headers = {"Retry-After": b.retry_after} if b.retry_after else None
            return body, web.json_response(error, status=b.status, headers=headers)
        return body, None

    def _text(self) -> str:
        return self.behaviour.content if self.behaviour.content is not None else f"hello from {self.name}"

    def _usage(self, body: dict[str, Any], text: str) -> dict[str, int]:
        prompt = sum(len(str(m.get("content") or "").split()) for m in body.get("messages") or []) + len(
            str(body.get("prompt") or "").split()
        )
        completion = max(len(text.split()), 1)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, error = await self._begin(request)
        if error is not None:
            return error
        if body.get("stream"):
            return await self._stream(request, body, chat=True)
        text = self._text()
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if self.behaviour.tool_calls else text,
        }
        if self.behaviour.tool_calls:
            message["tool_calls"] = self.behaviour.tool_calls
        answer = {
            "id": "chatcmpl-standin",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if self.behaviour.tool_calls else "stop",
                }
            ],
            "usage": self._usage(body, text),
        }
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, error = await self._begin(request)
        if error is not None:
            return error
        if body.get("stream"):
            return await self._stream(request, body, chat=False)
        text = self._text()
        answer = {
            "id": "cmpl-standin",
            "object": "text_completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": self._usage(body, text),
        }
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    def _events(self, body: dict[str, Any], chat: bool) -> list[dict[str, Any]]:
        """The chunks of a streamed answer: the text in ``chunks`` pieces (or the tool calls), a final chunk."""
        text = self._text()
        n = max(self.behaviour.chunks, 1)
        size = -(-len(text) // n) or 1
        pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
        base = {
            "id": "chatcmpl-standin" if chat else "cmpl-standin",
            "model": body.get("model"),
            "created": 0,
        }
        kind = "chat.completion.chunk" if chat else "text_completion"
        events: list[dict[str, Any]] = []
        if chat and self.behaviour.tool_calls:
            for i, call in enumerate(self.behaviour.tool_calls):
                delta = {"tool_calls": [{"index": i, **call}]}
                events.append(
                    {**base, "object": kind, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                )
        else:
            for p in pieces:
                choice: dict[str, Any] = (
                    {"index": 0, "delta": {"content": p}} if chat else {"index": 0, "text": p}
                )
                events.append({**base, "object": kind, "choices": [{**choice, "finish_reason": None}]})
        finish = "tool_calls" if chat and self.behaviour.tool_calls else "stop"
        last: dict[str, Any] = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        events.append({**base, "object": kind, "choices": [{**last, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "object": kind, "choices": [], "usage": self._usage(body, text)})
        return events

    async def _stream(self, request: web.Request, body: dict[str, Any], chat: bool) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await out.prepare(request)
        b = self.behaviour
        for i, event in enumerate(self._events(body, chat)):
            if b.cut_after is not None and i >= b.cut_after:
                assert request.transport is not None
                request.transport.close()  # the backend dies mid-stream
                return out
            if b.chunk_delay and i:
                await asyncio.sleep(b.chunk_delay)
            await out.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8001", help="host:port (default %(default)s)")
    parser.add_argument("--name", default="standin", help="named in every answer (default %(default)s)")
    parser.add_argument(
        "--chunks", type=int, default=8, help="chunks per streamed answer (default %(default)s)"
    )
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    standin = StandIn(args.name, Behaviour(chunks=args.chunks), record=False)
    web.run_app(standin.app(), host=host or "127.0.0.1", port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
