"""What a peer says, made fit for a log line or an error message.

Anything a peer sends (its node id before the handshake proves it, an agent id, a
method name, a refusal's reason, the text of an error its bytes caused) may be huge
or hold a newline that forges a log line, or terminal escapes. `said` is the one
way such text reaches a log or an error message here: escaped and cut short.
"""

from __future__ import annotations

__all__ = ["SHOWN", "said"]

#: Characters of a peer's text shown, at most; the rest is counted, not shown.
SHOWN = 80


def said(value: object, limit: int = SHOWN) -> str:
    """``value`` as a peer sent it, safe to log: a string or bytes as an escaped
    literal (``repr``: no newline, control character or escape sequence survives),
    cut to ``limit`` characters with its full length said; a number or None as it
    is; anything else by its type's name only (its repr could be anything, of any
    size, and run the peer's code). Costs a slice and a repr of ``limit`` characters,
    whatever the value's size."""
    if isinstance(value, str | bytes | bytearray):
        # str.__str__ / bytes(): the plain value of a subclass, whose methods a
        # peer's pickle may have chosen.
        text: str | bytes = str.__str__(value) if isinstance(value, str) else bytes(value)
        shown = repr(text[:limit])
        if len(text) > limit:
            shown += f"... ({len(text):,} {'characters' if isinstance(text, str) else 'bytes'})"
        return shown
    if value is None or type(value) in (bool, int, float):
        return repr(value)
    return f"a {said(type(value).__name__)}"
