"""What the task clustering sees of one call: a bag of prefixed tokens (``document``), the same at request time.

A recurring task shows in what its calls share: the system prompt, the wording of the instruction in the last
user turn, the tools offered and called, and the shape of the answer (the keys of a JSON object, a tool call,
a one-word label or prose). What differs between calls of one task is the data: numbers, emails, URLs, dates,
ids, quoted values, proper names. Those are masked to placeholders (``<num>``, ``<email>``, ...) so they do not
pull calls of one task apart, nor calls of different tasks together.

Every token carries the prefix of the part it came from (``sys_``, ``usr_``, ``tool_``, ``fmt_``, ``turns_``,
``call_``, ``key_``, ``ans_``, ``len_``), so "order" in a system prompt and "order" in a user turn are
different terms, and ``weight`` gives each part its weight in the vector space. The response parts
(``RESPONSE_PREFIXES``) exist only when a response is given: the gateway tags a call from its request alone
(``document(request, None)``), so the classifier is built on request-only documents.

Masking is by regular expressions, so it is approximate: a capitalised word in mid-sentence is taken for a
name (a language, a product too), one at the start of a sentence is not. Pure python and fast: the masking of
a system prompt is cached (the calls of a task share it), and a call takes some 60 microseconds on a slow
machine, so the advisor featurises 100,000 calls in a few seconds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

PREFIXES: tuple[str, ...] = ("sys", "usr", "tool", "fmt", "turns", "call", "key", "ans", "len")
RESPONSE_PREFIXES: frozenset[str] = frozenset({"call", "key", "ans", "len"})
# A part's weight multiplies its terms' TF-IDF weights. What a task's calls share most reliably is the shape of
# the answer it asks for (the JSON keys, the tool called), its tools and its response format: they weigh most.
# A system prompt is paraphrased by each agent that calls for the task, and its long text would otherwise
# outweigh the rest; the number of turns and the answer's length say least. The response's parts (absent at
# request time) help the clustering; the classifier does without them.
WEIGHTS: Mapping[str, float] = {
    "sys": 0.7,
    "usr": 1.0,
    "tool": 2.0,
    "fmt": 2.0,
    "turns": 0.7,
    "call": 2.0,
    "key": 3.0,
    "ans": 1.0,
    "len": 0.7,
}
HEAD_CHARS = 1500  # of a long text, its head and tail carry the instruction; the middle is data
TAIL_CHARS = 500
MAX_KEYS = 12  # top-level keys of a JSON answer that count
SHORT_ANSWER_WORDS = 3  # an answer this short is a label ("positive", "spam"): its words are tokens
ANSWER_CHARS = 600  # of a text answer, the head says how it is answered (``answer_words``)

# Masks, applied in this order (a URL holds a number, a date holds numbers, an id holds digits). Each runs only
# when the text holds the characters it needs (most text has no URL, email or quote), and the patterns start
# with a digit or a literal where they can, which lets the regex engine skip ahead: masking is most of the
# featurising time. ``\d(?<!\w\d)`` is a digit at the start of a word (``\b\d``, but fast).
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_DIGIT = re.compile(r"\d")
_DATE = re.compile(
    r"\d(?<!\w\d)(?:\d{3}-\d{1,2}-\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)?"
    r"|\d?[/.]\d{1,2}[/.]\d{2,4}"
    r"|\d?(?:st|nd|rd|th)? (?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?,? \d{4})\b"
)
_MONTH_DATE = re.compile(
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.? \d{1,2}(?:st|nd|rd|th)?,? \d{4}\b"
)
_TIME = re.compile(r"\d(?<!\w\d)\d?:\d{2}(?::\d{2})?(?:\s?[ap]\.?m\b\.?)?", re.IGNORECASE)
# ids: a word mixing letters and digits (ORD-12345, user_42, a3f9c2d1, a UUID, 3pm), or a long digit run
_ID = re.compile(r"(?<![\w-])(?:[A-Za-z]++[-_]?\d[\w-]*|\d++[-_]?[A-Za-z][\w-]*|\d{7,})\b")
_NUM = re.compile(r"\d+(?:[.,]\d+)*%?")
_QUOTE = re.compile(r"\"[^\"\n]{1,80}\"|“[^”\n]{1,80}”|`[^`\n]{1,80}`|(?<!\w)'[^'\n]{1,80}'(?!\w)")
# a proper name: capitalised words in mid-sentence (after a lowercase letter, digit or comma and a space; the
# look-behind comes after the first capital, so the engine skips to capitals fast)
_UPPER = "A-ZÀ-ÖØ-Þ"
_LOWER = "a-zß-öø-ÿ\u0100-\u017f'\u2019"  # (Latin Extended-A mixes cases: taken as lowercase)
_NAME = re.compile(
    rf"[{_UPPER}](?<=[{_LOWER}0-9,;:>)] [{_UPPER}])[{_LOWER}]+(?:[ -][{_UPPER}][{_LOWER}]+)*\b"
)
_WORD = re.compile(r"<[a-z]+>|[^\W\d_]{2,}")
_STOP_WORDS = """a an and are as at be been but by can could did do does for from had has have he her his how i if in
    into is it its me my no not of on or our she so than that the their them then there these they this to
    us was we were what when where which who will with would you your yours"""
_STOP = frozenset(_STOP_WORDS.split())


def mask(text: str) -> str:
    """``text`` with its data masked: numbers, emails, URLs, dates, times, ids, quoted values and proper
    names become ``<num>``, ``<email>``, ``<url>``, ``<date>``, ``<time>``, ``<id>``, ``<quote>``, ``<name>``."""
    if "://" in text or "www." in text or "WWW." in text:
        text = _URL.sub(" <url> ", text)
    if "@" in text:
        text = _EMAIL.sub(" <email> ", text)
    if _DIGIT.search(text):
        text = _MONTH_DATE.sub(" <date> ", _DATE.sub(" <date> ", text))
        if ":" in text:
            text = _TIME.sub(" <time> ", text)
        text = _NUM.sub(" <num> ", _ID.sub(" <id> ", text))
    if '"' in text or "'" in text or "`" in text or "“" in text:
        text = _QUOTE.sub(" <quote> ", text)
    return _NAME.sub(" <name> ", text)


def words(text: str) -> list[str]:
    """The lowercase words of ``text`` after masking, without stop words and one-letter words; a long text
    contributes its head and tail only."""
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = text[:HEAD_CHARS] + " " + text[-TAIL_CHARS:]
    return [w for w in _WORD.findall(mask(text).lower()) if w not in _STOP]


@lru_cache(maxsize=1024)
def _system_tokens(text: str) -> str:
    return " ".join(f"sys_{w}" for w in words(text))


def text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _messages(request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = request.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, Mapping)]


def _name(value: Any) -> str:
    return re.sub(r"[^\w.-]+", "_", str(value).strip().lower())[:64] or "_"


def _tool_names(tools: Any) -> list[str]:
    names = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool.get("name")
        if name is not None:
            names.append(_name(name))
    return sorted(set(names))


def _format_tokens(request: Mapping[str, Any]) -> list[str]:
    tokens = []
    fmt = request.get("response_format")
    if isinstance(fmt, Mapping):
        tokens.append(f"fmt_{_name(fmt.get('type', 'object'))}")
        schema = fmt.get("json_schema")
        if isinstance(schema, Mapping) and schema.get("name") is not None:
            tokens.append(f"fmt_schema_{_name(schema['name'])}")
    choice = request.get("tool_choice")
    if isinstance(choice, str):
        tokens.append(f"fmt_tool_choice_{_name(choice)}")
    elif isinstance(choice, Mapping):
        tokens.append("fmt_tool_choice_named")
    return tokens


def _turns_tokens(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    users = sum(1 for m in messages if m.get("role") == "user")
    bucket = "1" if users <= 1 else "2-3" if users <= 3 else "4+"
    tool_results = any(m.get("role") == "tool" for m in messages)
    return [f"turns_{bucket}"] + (["turns_tool_results"] if tool_results else [])


def _system_and_user(messages: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """The system (and developer) prompt, and the last user turn."""
    system = "\n".join(
        text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    last_user = next((text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    return system, last_user


def request_tokens(request: Mapping[str, Any]) -> list[str]:
    """The request's part of a document: system prompt, last user turn, tools offered, format, turns."""
    messages = _messages(request)
    system, last_user = _system_and_user(messages)
    # the system prompt recurs (its masking is cached); a user turn seldom does
    user = " ".join(f"usr_{w}" for w in words(last_user))
    parts = [_system_tokens(system), user]
    parts += [f"tool_{n}" for n in _tool_names(request.get("tools"))]
    parts += _format_tokens(request)
    parts += _turns_tokens(messages)
    return [p for p in parts if p]


def _length_token(text: str) -> str:
    n = len(text.split())
    if n == 0:
        return "len_0"
    if n <= SHORT_ANSWER_WORDS:
        return "len_short"
    return "len_20" if n <= 20 else "len_100" if n <= 100 else "len_long"


def _content_tokens(content: str) -> list[str]:
    stripped = content.strip()
    if stripped[:1] in "{[" and stripped:
        try:
            value = json.loads(stripped)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return ["key_" + _name(k) for k in sorted(value)[:MAX_KEYS]] or ["key_{}"]
        if isinstance(value, list):
            first = value[0] if value else None
            keys = sorted(first)[:MAX_KEYS] if isinstance(first, dict) else []
            return ["key_[]"] + ["key_" + _name(k) for k in keys]
    tokens = [_length_token(stripped)]
    if tokens[0] == "len_short":
        tokens += [f"ans_{w}" for w in words(stripped)]
    return tokens


def _message(response: Mapping[str, Any]) -> Mapping[str, Any] | None:
    choices = response.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, Mapping) else None
    return message if isinstance(message, Mapping) else None


def response_tokens(response: Mapping[str, Any]) -> list[str]:
    """The response's part of a document: the tools called, else the shape of the answer."""
    message = _message(response)
    if message is None:
        return []
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        functions = [c.get("function") for c in calls if isinstance(c, Mapping)]
        names = [_name(f.get("name", "_")) if isinstance(f, Mapping) else "_" for f in functions]
        return [f"call_{n}" for n in sorted(set(names))]
    return _content_tokens(text_of(message.get("content")))


def answer_words(response: Mapping[str, Any] | None) -> list[str]:
    """The words of the head of a text answer (``ans_`` tokens; none for JSON, a tool call or no answer): how
    consistently a cluster's calls are answered tells a task from open-ended chat (``cluster``)."""
    message = _message(response) if isinstance(response, Mapping) else None
    if message is None or message.get("tool_calls"):
        return []
    text = text_of(message.get("content")).strip()
    if text[:1] in ("{", "["):
        return []
    return [f"ans_{w}" for w in words(text[:ANSWER_CHARS])]


def document(request: Mapping[str, Any], response: Mapping[str, Any] | None = None) -> str:
    """The call as space-separated prefixed tokens; ``response`` None at request time. Never raises on a
    malformed body: what cannot be read contributes nothing."""
    tokens = request_tokens(request) if isinstance(request, Mapping) else []
    if isinstance(response, Mapping):
        tokens += response_tokens(response)
    return " ".join(tokens)


def prefix_of(token: str) -> str:
    """The part a token came from (``sys`` of ``sys_order``)."""
    return token.split("_", 1)[0]


def weight(token: str) -> float:
    """The weight of a token's part (1.0 for an unknown part)."""
    return WEIGHTS.get(prefix_of(token), 1.0)


def sublinear_tf(count: int) -> float:
    """The term frequency weight the TF-IDF uses: 1 + ln(count)."""
    return 1.0 + math.log(count)


def readable(request: Mapping[str, Any], response: Mapping[str, Any] | None = None) -> str:
    """The call as masked plain text for a sentence-embedding model (``find_tasks(embed=...)``): system prompt,
    last user turn (head), the tools offered and the response's shape tokens."""
    if not isinstance(request, Mapping):
        return ""
    system, last_user = _system_and_user(_messages(request))
    lines = [mask(system[:HEAD_CHARS]).strip(), mask(last_user[:HEAD_CHARS]).strip()]
    tools = _tool_names(request.get("tools"))
    if tools:
        lines.append("tools: " + ", ".join(tools))
    if isinstance(response, Mapping):
        lines.append("answer: " + " ".join(response_tokens(response)))
    return "\n".join(line for line in lines if line)
