"""The floor of any gateway on aiohttp: a proxy with no routing, authentication, limits, metrics or capture.

``python -m bench.bare_proxy --listen 127.0.0.1:PORT --upstream http://127.0.0.1:PORT`` reads each
``/v1/chat/completions`` body, posts it to the upstream with one keep-alive client session, and returns the answer
(passing a stream through chunk by chunk), on uvloop when it is installed: the same server, client and loop as
``slm-operator gateway``. ``make bench-gateway`` measures it beside the gateway, so the share of the gateway's cost
that is the HTTP stack itself, and the throughput no gateway on this stack can pass, are measured in the same run.
"""

from __future__ import annotations

import argparse

from aiohttp import ClientSession, DummyCookieJar, TCPConnector, web

PATH = "/v1/chat/completions"


def app(upstream: str) -> web.Application:
    application = web.Application()
    session: dict[str, ClientSession] = {}

    async def open_session(_app: web.Application) -> None:
        session["s"] = ClientSession(connector=TCPConnector(limit=0), cookie_jar=DummyCookieJar())

    async def close_session(_app: web.Application) -> None:
        await session["s"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session["s"].post(
            upstream + PATH, data=body, headers={"Content-Type": "application/json"}
        ) as answer:
            kind = answer.headers.get("Content-Type", "application/json")
            if kind.startswith("text/event-stream"):
                out = web.StreamResponse(status=answer.status, headers={"Content-Type": kind})
                await out.prepare(request)
                async for chunk in answer.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
            return web.Response(
                body=await answer.read(), status=answer.status, headers={"Content-Type": kind}
            )

    application.on_startup.append(open_session)
    application.on_cleanup.append(close_session)
    application.router.add_post(PATH, relay)
    return application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT of the OpenAI-compatible server")
    args = parser.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    web.run_app(
        app(args.upstream.rstrip("/")),
        host=host,
        port=int(port),
        print=None,
        access_log=None,
        loop=loop_factory() if loop_factory else None,
    )


if __name__ == "__main__":
    main()
