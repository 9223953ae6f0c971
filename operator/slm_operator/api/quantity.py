"""Kubernetes resource quantities (``12Gi``, ``1500m``, ``2e3``) parsed into exact values.

The grammar is the one of ``k8s.io/apimachinery/pkg/api/resource``: a signed decimal number followed by
a binary suffix (Ki, Mi, Gi, Ti, Pi, Ei), a decimal SI suffix (n, u, m, k, M, G, T, P, E) or a decimal
exponent (``e3``, ``E-2``). Values are kept as :class:`fractions.Fraction`, never as floats, so
``quantity_bytes("1.5Gi")`` is exactly ``1610612736``.
"""

from __future__ import annotations

import re
from fractions import Fraction

QUANTITY_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
_RE = re.compile(QUANTITY_PATTERN)

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}

MiB = 1 << 20
GiB = 1 << 30


class QuantityError(ValueError):
    """The text is not a Kubernetes quantity."""


def parse_quantity(text: str | int) -> Fraction:
    """Return the exact value of a Kubernetes quantity."""
    if isinstance(text, bool):
        raise QuantityError(f"{text!r} is not a quantity")
    if isinstance(text, int):
        return Fraction(text)
    s = str(text).strip()
    m = _RE.match(s)
    if not m:
        raise QuantityError(
            f"{text!r} is not a Kubernetes quantity (examples: '20Gi', '1500Mi', '512M', '1500m')"
        )
    number, suffix = m.group(1), m.group(2) or ""
    sign = -1 if s.startswith("-") else 1
    value = Fraction(number)
    if suffix in _BINARY:
        value *= _BINARY[suffix]
    elif suffix in _DECIMAL:
        value *= _DECIMAL[suffix]
    else:  # decimal exponent
        value *= Fraction(10) ** int(suffix[1:])
    return sign * value


def quantity_bytes(text: str | int) -> int:
    """A memory quantity in whole bytes (rounded up, as the API server does for fractional bytes)."""
    value = parse_quantity(text)
    whole = value.numerator // value.denominator
    return whole if whole == value else whole + 1


def format_bytes(n: int) -> str:
    """Bytes as the shortest exact binary quantity when there is one, else Mi rounded up (``19968Mi``)."""
    if n == 0:
        return "0"
    for suffix, size in (("Ti", 1 << 40), ("Gi", GiB), ("Mi", MiB)):
        if n % size == 0:
            return f"{n // size}{suffix}"
    if n < MiB:
        return f"{-(-n // 1024)}Ki"
    return f"{-(-n // MiB)}Mi"
