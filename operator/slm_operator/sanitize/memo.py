"""The findings of strings seen recently, so a string that recurs is analysed once. Pure.

Agent traffic repeats most of its strings: the system prompt and the tool definitions of every call of an agent,
and the structure of the OpenAI format (roles, ``finish_reason``, the model name). A string's findings depend only
on the string (spaCy's NER and Presidio's recognisers read each text on its own), so looking them up again gives
exactly what analysing it again would. Only the placeholders depend on the record, and they are written after.

The memo is bounded by the characters it holds (least recently used first out) and is safe to share between
threads. It holds raw strings, as the queue in front of it does: keep it in the process that redacts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

from slm_operator.sanitize.spans import Found

#: Characters of strings a memo holds at most (about 4-16 MB of text), and the longest string it keeps.
MAX_CHARS = 4_000_000
MAX_STRING = 100_000


class FindingsMemo:
    """``find(texts, analyse)``: ``analyse`` runs once, on the distinct strings not seen recently."""

    def __init__(self, max_chars: int = MAX_CHARS, max_string: int = MAX_STRING) -> None:
        self.max_chars = max_chars
        self.max_string = min(max_string, max_chars)
        self._found: OrderedDict[tuple[Hashable, str], tuple[Found, ...]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def find(
        self,
        texts: Sequence[str],
        analyse: Callable[[Sequence[str]], list[list[Found]]],
        context: Hashable = None,
    ) -> list[list[Found]]:
        """The findings of each text. ``context`` is part of the key: what else the findings depend on (the
        analyser's settings)."""
        known: dict[str, tuple[Found, ...]] = {}
        with self._lock:
            for text in texts:
                key = (context, text)
                if text not in known and key in self._found:
                    self._found.move_to_end(key)
                    known[text] = self._found[key]
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            for text, found in zip(missing, analyse(missing), strict=True):
                known[text] = tuple(found)
            with self._lock:
                for text in missing:
                    self._keep((context, text), known[text])
        with self._lock:
            self.misses += len(missing)
            self.hits += len(texts) - len(missing)
        return [list(known[t]) for t in texts]

    def clear(self) -> None:
        with self._lock:
            self._found.clear()
            self._chars = 0

    def __len__(self) -> int:
        return len(self._found)

    def _keep(self, key: tuple[Hashable, str], found: tuple[Found, ...]) -> None:
        size = len(key[1])
        if size > self.max_string or key in self._found:
            return
        self._found[key] = found
        self._chars += size
        while self._chars > self.max_chars:
            (_, old), _ = self._found.popitem(last=False)
            self._chars -= len(old)
