-- Schema version 1 of the usage store (SQLite). docs/capture.md describes every column.
-- Times are UTC text 'YYYY-MM-DDTHH:MM:SS.ffffffZ', which sorts as time; JSON columns are text.
CREATE TABLE captured_calls (
    id                TEXT PRIMARY KEY,
    time              TEXT NOT NULL,
    route             TEXT NOT NULL,
    task              TEXT,
    backend           TEXT NOT NULL,
    model             TEXT NOT NULL,
    stream            INTEGER NOT NULL,
    status            INTEGER NOT NULL,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    ttft_ms           REAL,
    total_ms          REAL NOT NULL,
    fallback_reason   TEXT,
    caller            TEXT NOT NULL,
    redact            TEXT NOT NULL,
    request           TEXT NOT NULL,
    response          TEXT,
    record_version    INTEGER NOT NULL
);
CREATE INDEX captured_calls_time ON captured_calls (time);
CREATE INDEX captured_calls_route_time ON captured_calls (route, time);
CREATE INDEX captured_calls_caller ON captured_calls (caller);
