"""The daemons' log lines (agentmesh/_private/logs.py): text and JSON."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from agentmesh._private import logs

TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _record(
    formatter: logging.Formatter, level: int, message: str, *args: object, **extra: object
) -> str:
    """What a handler with ``formatter`` writes for one record (at ERROR and above,
    with the traceback of an exception being handled)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    log = logging.getLogger("agentmesh.test.logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.log(level, message, *args, exc_info=level >= logging.ERROR, extra=extra)
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
        log.propagate = True
    return stream.getvalue()


def test_a_json_line_has_time_level_logger_message_and_node() -> None:
    formatter = logs.JsonFormatter()
    first = _record(formatter, logging.WARNING, "node %s is down", "n2")
    formatter.node = "n1"
    second = _record(formatter, logging.INFO, "plain")
    assert first.count("\n") == 1
    one, two = json.loads(first), json.loads(second)
    assert re.fullmatch(TIME, one.pop("time"))
    assert one == {
        "level": "WARNING",
        "logger": "agentmesh.test.logs",
        "message": "node n2 is down",
    }
    assert (two["message"], two["node"]) == ("plain", "n1")  # once the node id is known


def test_a_json_line_carries_the_traceback_as_a_string_and_the_extras() -> None:
    line = _record(logs.JsonFormatter(), logging.ERROR, "crashed", agent="alice", agent_node="n3")
    assert line.count("\n") == 1  # the traceback's newlines are escaped in its string
    entry = json.loads(line)
    assert entry["exc_info"].startswith("Traceback (most recent call last):")
    assert entry["exc_info"].endswith("RuntimeError: boom")
    assert (entry["agent"], entry["agent_node"]) == ("alice", "n3")


def test_a_text_line_has_time_level_logger_and_message() -> None:
    formatter = logs.TextFormatter()
    line = _record(formatter, logging.INFO, "joined from %s", "127.0.0.1:1")
    assert re.fullmatch(rf"{TIME} INFO agentmesh\.test\.logs: joined from 127\.0\.0\.1:1\n", line)
    lines = _record(formatter, logging.ERROR, "crashed").splitlines()
    assert re.fullmatch(rf"{TIME} ERROR agentmesh\.test\.logs: crashed", lines[0])
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"


def test_configure_refuses_what_the_flags_do_not_offer() -> None:
    with pytest.raises(ValueError, match="log level"):
        logs.configure("verbose", "text")
    with pytest.raises(ValueError, match="format"):
        logs.configure("info", "xml")
