"""How the daemons (``agentmesh head|node``) log: a level, and text or JSON lines.

The library itself only logs, under ``agentmesh.*``, to a `logging.NullHandler`; an
application (the daemons are one) chooses where records go. ``text`` is one line per
record: time, level, logger, message (and a traceback after it, if any). ``json`` is
one object per line, for log collectors: ``time``, ``level``, ``logger``,
``message``, ``node`` (this daemon's node id, once known), ``exc_info`` (the
traceback, as a string) when there is one, and whatever the record carries as
``extra`` (a crash forwarded from another node has ``agent``, ``agent_id`` and
``agent_node``).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "TextFormatter", "configure"]

#: The levels ``--log-level`` takes, least severe first.
LEVELS = ("debug", "info", "warning", "error")
#: The formats ``--log-format`` takes.
FORMATS = ("text", "json")

#: Attributes every `LogRecord` has: anything else on a record came as ``extra``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def _iso_time(created: float) -> str:
    """``2024-05-01T12:00:00.123Z``: UTC, to the millisecond, the same on every node."""
    when = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>``, then the traceback's lines, if any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        #: This daemon's node id, once known (the JSON lines carry it).
        self.node: str | None = None

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _iso_time(record.created)


class JsonFormatter(TextFormatter):
    """One JSON object per record, on one line (a traceback is a string in it)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.node is not None:
            entry["node"] = self.node
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # also a traceback from another node, set as exc_text
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str)


def configure(
    level: str = "warning", fmt: str = "text", stream: TextIO | None = None
) -> TextFormatter | None:
    """Send every record at ``level`` or above to ``stream`` (stderr) in ``fmt``;
    returns the formatter (set its ``node`` once the node id is known). Does nothing,
    and returns None, if logging is configured already (the root logger has a
    handler): the program that did so decides."""
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level one of {LEVELS}, format one of {FORMATS}")
    root = logging.getLogger()
    if root.handlers:
        return None
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return formatter
