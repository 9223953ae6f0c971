"""Usage capture (step S1 of the LLM-to-SLM loop): what the gateway records of each call, and where it goes.

Pure parts: ``record`` (``CaptureRecord``, the sampling decision, time bounds), ``stream`` (a streamed response
reassembled), ``hashing`` (the caller's salted hash), ``redact`` (a record through the sanitiser).
Shell: ``pipeline`` (``Capture``: queue, worker, spool, replay, metrics), ``spool`` (segment files),
``store`` / ``sqlite_store`` / ``postgres_store`` / ``stores`` (the usage stores and ``open_store``).
``docs/capture.md`` describes what is kept, the guarantees, the schema, retention and erasure.
"""

from slm_operator.capture.hashing import caller_hash, load_salt
from slm_operator.capture.pipeline import Capture, CaptureStats
from slm_operator.capture.record import RECORD_SCHEMA_VERSION, CaptureRecord, sampled
from slm_operator.capture.redact import RecordSanitizer, SanitizerFactory
from slm_operator.capture.store import Store, StoreError, WriteResult
from slm_operator.capture.stores import open_store
from slm_operator.capture.stream import StreamAssembler, reassemble_chat_stream

__all__ = [
    "RECORD_SCHEMA_VERSION",
    "Capture",
    "CaptureRecord",
    "CaptureStats",
    "RecordSanitizer",
    "SanitizerFactory",
    "Store",
    "StoreError",
    "StreamAssembler",
    "WriteResult",
    "caller_hash",
    "load_salt",
    "open_store",
    "reassemble_chat_stream",
    "sampled",
]
