-- Schema version 1 of the usage store (PostgreSQL). docs/capture.md describes every column.
CREATE TABLE captured_calls (
    id                TEXT PRIMARY KEY,
    time              TIMESTAMPTZ NOT NULL,
    route             TEXT NOT NULL,
    task              TEXT,
    backend           TEXT NOT NULL,
    model             TEXT NOT NULL,
    stream            BOOLEAN NOT NULL,
    status            INTEGER NOT NULL,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    ttft_ms           DOUBLE PRECISION,
    total_ms          DOUBLE PRECISION NOT NULL,
    fallback_reason   TEXT,
    caller            TEXT NOT NULL,
    redact            JSONB NOT NULL,
    request           JSONB NOT NULL,
    response          JSONB,
    record_version    INTEGER NOT NULL
);
CREATE INDEX captured_calls_time ON captured_calls (time);
CREATE INDEX captured_calls_route_time ON captured_calls (route, time);
CREATE INDEX captured_calls_caller ON captured_calls (caller);
