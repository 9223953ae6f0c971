"""PostgreSQL stopped under a stream of captured calls: every call is kept, exactly once, after it returns.

A real server (tests/postgres.py), really stopped (``pg_ctl stop -m fast``) and started again on the same port.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from slm_operator.capture import Capture, CaptureRecord
from tests.postgres import postgres_server
from tests.test_capture_pipeline import until
from tests.test_capture_record import make_record


def test_postgresql_stopped_under_load_loses_no_record_and_keeps_each_once(tmp_path: Path) -> None:
    with postgres_server() as pg:
        url = pg.create_database("usage")
        sent: list[CaptureRecord] = []

        async def body() -> None:
            c = Capture(
                url,
                spool_dir=tmp_path / "spool",
                registry=CollectorRegistry(),
                store_timeout=1.0,
                retry_min=0.05,
                retry_max=0.5,
                batch_size=64,
            )
            await c.start()
            calls = asyncio.Event()

            async def agent_traffic() -> None:
                while not calls.is_set():
                    record = make_record(redact=["Email"])
                    assert c.submit(record)
                    sent.append(record)
                    await asyncio.sleep(0.002)

            traffic = asyncio.create_task(agent_traffic())
            await until(lambda: c.stats.written >= 200, "calls stored while PostgreSQL is up")
            await asyncio.to_thread(pg.stop)
            down_at = len(sent)
            await until(lambda: len(sent) >= down_at + 500, "calls made while PostgreSQL is down")
            assert c.stats.spooled > 0
            await asyncio.to_thread(pg.start)
            after = len(sent)
            await until(lambda: len(sent) >= after + 200, "calls made after PostgreSQL is back")
            calls.set()
            await traffic
            await until(lambda: c.stats.spool_bytes == 0 and c.stats.queue_depth == 0, "the spool replayed")
            await c.stop()
            st = c.stats
            assert st.dropped == 0 and st.queued == len(sent)
            assert st.spooled >= 400 and st.replayed == st.spooled
            assert st.store_errors >= 1

            conn = await asyncpg.connect(url)
            try:
                ids = [row["id"] for row in await conn.fetch("SELECT id FROM captured_calls")]
                leaked = await conn.fetchval(
                    "SELECT count(*) FROM captured_calls WHERE request::text LIKE '%jane@%'"
                )
            finally:
                await conn.close()
            assert len(ids) == len(sent) and set(ids) == {r.id for r in sent}  # every call, each once
            assert leaked == 0

        asyncio.run(body())
