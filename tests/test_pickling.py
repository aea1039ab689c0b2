"""Code shipped by value (a script's classes and functions) keeps its file name, so
tracebacks on other nodes name the script and its lines (kernel/pickling.py)."""

from __future__ import annotations

import traceback

import cloudpickle
import pytest

from agentmesh._private.kernel import pickling


def test_code_shipped_by_value_keeps_its_file_name_and_lines() -> None:
    def fail() -> None:  # defined in a function: cloudpickle ships it by value
        raise RuntimeError("here")

    line = fail.__code__.co_firstlineno + 1
    shipped = cloudpickle.loads(pickling.dumps(fail))
    assert shipped is not fail
    with pytest.raises(RuntimeError) as caught:
        shipped()
    frame = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno, frame.name) == (__file__, line, "fail")
    # What cloudpickle alone does: the reason this pickler exists.
    plain = cloudpickle.loads(cloudpickle.dumps(fail))
    assert plain.__code__.co_filename == "<dynamic-code>"
