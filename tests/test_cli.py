"""The ``agentmesh`` command line: what each daemon flag turns into.

The daemons themselves run in tests/test_cluster.py; here ``main`` builds its `Mesh`
with a stand-in, so a test sees the keyword arguments a command line becomes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import agentmesh as am
from agentmesh._private import cli

#: The Mesh options whose defaults the daemons must share with the library.
TUNED = ("heartbeat", "dead_after", "forget_dead_after", "slow_turn")


def _mesh_options(monkeypatch: pytest.MonkeyPatch, *argv: str) -> dict[str, Any]:
    """The keyword arguments ``agentmesh *argv`` builds its Mesh with (nothing runs)."""
    built: list[dict[str, Any]] = []

    def mesh(**options: Any) -> object:
        built.append(options)
        return object()

    def run(main: Any) -> None:
        main.close()  # the daemon's coroutine, never started

    monkeypatch.setattr(cli, "_log_to_stderr", lambda *args: None)  # pytest's logging stays
    monkeypatch.setattr(cli, "Mesh", mesh)
    monkeypatch.setattr(cli, "run", run)
    cli.main(list(argv))
    [options] = built
    return options


def _library_default(option: str) -> Any:
    return next(f.default for f in dataclasses.fields(am.MeshConfig) if f.name == option)


@pytest.mark.parametrize(
    "argv", [("head",), ("node", "--join", "127.0.0.1:7470")], ids=["head", "node"]
)
def test_the_daemons_defaults_are_the_librarys(
    monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    options = _mesh_options(monkeypatch, *argv)
    for option in TUNED:
        # An option the command leaves out gets the library's default by construction.
        assert options.get(option, _library_default(option)) == _library_default(option), option


@pytest.mark.parametrize(
    "argv", [("head",), ("node", "--join", "127.0.0.1:7470")], ids=["head", "node"]
)
def test_head_and_node_take_the_same_shared_flags(
    monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    shared = (
        *("--advertise", "box:7000", "--token", "secret"),
        *("--resources", "cpu=2,gpu=1", "--labels", "zone=eu"),
        *("--heartbeat", "0.2", "--slow-turn", "0"),
    )
    options = _mesh_options(monkeypatch, *argv, *shared)
    assert options["advertise"] == "box:7000"
    assert options["token"] == "secret"
    assert options["resources"] == {"cpu": 2.0, "gpu": 1.0}
    assert options["labels"] == {"zone": "eu"}
    assert options["heartbeat"] == 0.2
    assert options["slow_turn"] is None  # 0: the watchdog is off
    assert options["tls"] is None


def test_the_head_listens_on_its_port_and_takes_dead_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _mesh_options(monkeypatch, "head")["listen"] == "127.0.0.1:7470"
    options = _mesh_options(monkeypatch, "head", "--dead-after", "7", "--listen", "h:1")
    assert (options["dead_after"], options["listen"]) == (7.0, "h:1")


def test_a_worker_joins_and_listens_on_any_port(monkeypatch: pytest.MonkeyPatch) -> None:
    options = _mesh_options(monkeypatch, "node", "--join", "head:7470")
    assert (options["join"], options["listen"], options["role"]) == (
        "head:7470",
        "127.0.0.1:0",
        "worker",
    )
    assert options["resources"]  # this machine's, when not given


def test_tls_needs_a_certificate_and_its_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _mesh_options(monkeypatch, "head", "--tls-cert", "cert.pem")
    assert exited.value.code == 2
    assert "--tls-key" in capsys.readouterr().err


def test_a_heartbeat_beyond_dead_after_is_a_usage_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _mesh_options(monkeypatch, "node", "--join", "127.0.0.1:7470", "--heartbeat", "3")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--heartbeat (3s)" in err
    assert "--dead-after (2.5s)" in err
    assert "Traceback" not in err
    # A node given a longer --dead-after (its head's) takes the slower heartbeat.
    options = _mesh_options(
        monkeypatch, "node", "--join", "h:1", "--heartbeat", "3", "--dead-after", "10"
    )
    assert (options["heartbeat"], options["dead_after"]) == (3.0, 10.0)


def test_the_head_takes_how_long_dead_nodes_stay_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _mesh_options(monkeypatch, "head")["forget_dead_after"] == _library_default(
        "forget_dead_after"
    )
    options = _mesh_options(monkeypatch, "head", "--forget-dead-after", "5")
    assert options["forget_dead_after"] == 5.0


@pytest.mark.parametrize(
    "argv", [("head",), ("node", "--join", "127.0.0.1:7470")], ids=["head", "node"]
)
def test_daemons_log_at_the_level_and_in_the_format_asked(
    monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    asked: list[tuple[Any, ...]] = []
    monkeypatch.setattr(cli, "Mesh", lambda **options: object())
    monkeypatch.setattr(cli, "run", lambda main: main.close())
    monkeypatch.setattr(cli, "_log_to_stderr", lambda *args: asked.append(args))
    cli.main([*argv])
    cli.main([*argv, "--log-level", "debug", "--log-format", "json"])
    assert asked == [("warning", "text"), ("debug", "json")]
