"""The sanitiser's memo of recent findings: a string that recurs is analysed once, and what comes back is what
analysing it again would give; the memo stays within its bound."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from slm_operator.sanitize import Sanitizer
from slm_operator.sanitize.memo import FindingsMemo
from slm_operator.sanitize.spans import Found


def analyser(seen: list[str]):  # type: ignore[no-untyped-def]
    """A deterministic stand-in for Presidio that records what it was asked: every "x" is a finding."""

    def analyse(texts: Sequence[str]) -> list[list[Found]]:
        seen.extend(texts)
        return [[Found(i, i + 1, "Person") for i, ch in enumerate(t) if ch == "x"] for t in texts]

    return analyse


@given(st.lists(st.lists(st.text(alphabet="xy", max_size=6), max_size=8), max_size=8), st.integers(1, 20))
def test_the_memo_returns_what_analysis_would_and_analyses_each_string_once_while_it_is_held(
    calls: list[list[str]], max_chars: int
) -> None:
    direct: list[str] = []
    seen: list[str] = []
    memo = FindingsMemo(max_chars=max_chars)
    held: set[str] = set()
    for texts in calls:
        before = len(seen)
        assert memo.find(texts, analyser(seen)) == analyser(direct)(texts)
        assert sorted(seen[before:]) == sorted(set(texts) - held)  # only the strings not held, each once
        held = {key[1] for key in memo._found}
        assert memo._chars == sum(len(t) for t in held) <= max_chars


def test_the_least_recently_used_strings_leave_first_and_the_context_is_part_of_the_key() -> None:
    seen: list[str] = []
    memo = FindingsMemo(max_chars=5)
    memo.find(["aa", "bb"], analyser(seen))
    memo.find(["aa"], analyser(seen))  # aa is now the most recently used
    memo.find(["cc", "dd"], analyser(seen))  # over 5 characters: bb, then aa, leave
    assert seen == ["aa", "bb", "cc", "dd"]
    memo.find(["dd", "cc", "aa"], analyser(seen))
    assert seen[4:] == ["aa"]
    memo.find(["aa"], analyser(seen), context=300)  # another window size: analysed again
    assert seen[5:] == ["aa"]
    memo.find(["a" * 7], analyser(seen))  # longer than the whole memo: analysed, never held
    memo.find(["a" * 7], analyser(seen))
    assert seen[6:] == ["a" * 7, "a" * 7]
    assert (memo.hits, memo.misses) == (3, 8)


def test_a_sanitiser_analyses_what_a_record_repeats_once_and_redacts_it_alike() -> None:
    s = Sanitizer(["Email", "PhoneNumber"])
    system = "You are the billing agent. Escalate to billing@corp.example or +49 30 1234567."
    first = {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "mail ann@x.example"}]
    }
    second = {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "call +1 212 555 0100"},
        ]
    }
    clean1, counts1 = s.sanitize_record(first)
    misses = s._finder.memo.misses
    clean2, counts2 = s.sanitize_record(second)
    assert s._finder.memo.misses == misses + 1  # only the new user message was analysed
    assert clean1["messages"][0] == clean2["messages"][0]  # the system prompt redacted as before
    assert (
        "billing@corp.example" not in str(clean2) and "+49 30" not in str(clean2) and "212" not in str(clean2)
    )
    assert counts1 == {"Email": 2, "PhoneNumber": 1} and counts2 == {"Email": 1, "PhoneNumber": 2}
    s._finder.memo.clear()
    assert s.sanitize_record(second) == (clean2, counts2)  # analysed afresh: the same answer
