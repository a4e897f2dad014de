"""Values echoed back in messages, shortened so that one line stays one readable line.

A user can give a value of any length (a 5,000-digit number in a kernel file, a
megabyte-long ``--input``); a message quotes only its start and says how long it was::

    >>> shorten("1x" + "9" * 5001, limit=6)
    "'1x9999…' (5003 characters)"
"""

from __future__ import annotations

import re

#: Characters of a value quoted in full; longer values are cut to this many.
ECHO_CHARS = 40


def shorten(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` for a short value; its start, ``…`` and the length for a long one.

    A long string is quoted up to ``limit`` characters; a huge ``int`` is described by its
    digit count, never converted whole (Python refuses to turn an integer of more than
    4,300 digits into text); anything else is its ``repr``, cut the same way.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        digits = _int_digits(value)
        if digits <= limit:
            return repr(value)
        return f"a {digits}-digit number"
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit] + '…'!r} ({len(value)} characters)"
    try:
        text = repr(value)
    except ValueError:  # a container holding an integer too long to convert
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _int_digits(value: int) -> int:
    # bit_length gives the digit count within one; no conversion of the whole number to text.
    magnitude = abs(value)
    if magnitude < 10 ** 18:
        return len(str(magnitude))
    estimate = int(magnitude.bit_length() * 0.30102999566398120) + 1
    return estimate if magnitude >= 10 ** (estimate - 1) else estimate - 1


_QUOTED = re.compile(r"'([^'\n]{%d,}(?<!…))'" % (ECHO_CHARS + 1))  # not one shortened already


_LONG_WORD = re.compile(r"(?<!\S)[^\s']{%d,}" % (2 * ECHO_CHARS + 1))


def shorten_quoted(message: str, limit: int = ECHO_CHARS) -> str:
    """``message`` with every ``'…'``-quoted part longer than ``limit`` characters, and every
    unquoted word longer than twice that, shortened.

    For messages written by others (Click's ``Invalid value for '--filters': '1000…'``).
    """
    message = _QUOTED.sub(lambda m: shorten(m.group(1), limit), message)
    return _LONG_WORD.sub(lambda m: shorten(m.group(0), limit), message)


__all__ = ["ECHO_CHARS", "shorten", "shorten_quoted"]
