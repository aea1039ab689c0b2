"""The ``agentmesh`` command: ``head``, ``node``, ``status``, ``list agents``, ``drain``,
``stop`` and ``dashboard``.

Daemons print the address they bound as their first line of output (so ``--listen
127.0.0.1:0`` works for scripts), then ``metrics URL`` with ``--metrics-port`` and
``dashboard URL`` with ``--dashboard-port``, then serve until SIGTERM or SIGINT or a
drain request (``agentmesh drain NODE``), when they hand over the agents supervisors
on other nodes own (those start again elsewhere), stop the rest and leave the cluster.
``agentmesh dashboard`` prints its page's URL as its first line and serves it until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from . import logs
from .cluster.directory import DEFAULT_DEAD_AFTER, DEFAULT_FORGET_DEAD_AFTER, DEFAULT_HEARTBEAT
from .dashboard import DEFAULT_PORT, Dashboard
from .kernel.errors import AgentmeshError, AgentNotFound, AgentUnavailable
from .kernel.node import DEFAULT_SLOW_TURN
from .logs import TextFormatter
from .mesh import Mesh
from .placement.resources import machine_resources
from .running import run
from .sqlite_store import SqliteStateStore
from .tables import agent_table, node_table
from .transport.grpc_transport import TLS

__all__ = ["main"]


def _pairs(text: str, convert: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        out[key] = convert(value)
    return out


def _resources(text: str) -> dict[str, float]:
    return _pairs(text, float)


def _labels(text: str) -> dict[str, str]:
    return _pairs(text, str)


def _port(text: str) -> int:
    """``--metrics-port``, ``--dashboard-port``, ``dashboard --port``: a TCP port, 0 for any."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def _seconds(text: str) -> float:
    """``dashboard --interval``, ``--timeout``: a positive number of seconds."""
    seconds = float(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"a positive number of seconds, not {text}")
    return seconds


def _host(text: str) -> str:
    """``--host``, ``--dashboard-host``: where to listen, never empty (empty: everywhere)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a host to listen on (127.0.0.1: this machine only)")
    return text.strip()


def _slow_turn(args: argparse.Namespace) -> float | None:
    """``--slow-turn``: seconds, and 0 turns the watchdog off."""
    if args.slow_turn < 0:
        print("agentmesh: --slow-turn takes 0 (off) or more seconds", file=sys.stderr)
        sys.exit(2)
    return args.slow_turn or None


def _log_to_stderr(level: str | None = None, fmt: str = "text") -> TextFormatter | None:
    """The command is an application, so it configures logging (unless something
    already has): a daemon at ``level`` in ``fmt`` (``--log-level``, ``--log-format``;
    docs/observability.md), the other commands their WARNINGs and ERRORs as bare
    messages. The library has only a `logging.NullHandler`."""
    if level is None:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        return None
    return logs.configure(level, fmt)


async def _serve(
    mesh: Mesh, dashboard_host: str | None = None, dashboard_port: int | None = None
) -> None:
    async with mesh, contextlib.AsyncExitStack() as stack:
        print(mesh.address, flush=True)
        if mesh.metrics_url is not None:
            print(f"metrics {mesh.metrics_url}", flush=True)
        if dashboard_port is not None:
            assert dashboard_host is not None
            dashboard = Dashboard(mesh, host=dashboard_host, port=dashboard_port)
            await stack.enter_async_context(dashboard)
            print(f"dashboard {dashboard.url}", flush=True)
        stop = _stop_on_signals()
        waits = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(mesh.wait_drain_request()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        await stack.aclose()  # the dashboard first: it reads the mesh
        await mesh.drain()


def _stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set (a daemon then stops in order)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


class _Fatal(Exception):
    """What a client command says, on one line, before it exits with 1."""


@contextlib.asynccontextmanager
async def _joined(args: argparse.Namespace) -> AsyncIterator[Mesh]:
    """Join the cluster whose head is at ``--address`` as a driver, for one command;
    a head that cannot be reached is said so, plainly."""
    mesh = Mesh(join=args.address, token=args.token, tls=_tls(args))
    try:
        await mesh.__aenter__()
    except AgentUnavailable as exc:
        why = str(exc).removeprefix(f"cannot reach {args.address}: ")
        raise _Fatal(
            f"cannot reach the head at {args.address} ({why}); is it running there? "
            "(--address HOST:PORT)"
        ) from None
    try:
        yield mesh
    finally:
        await mesh.aclose()


async def _drain(args: argparse.Namespace) -> None:
    """Ask a node (by id or address) to drain, and wait until it has left."""
    node = args.node
    async with _joined(args) as mesh:
        nodes = await mesh.nodes()
        match = [n for n in nodes if n.alive and node in (n.id, n.address)]
        if not match:
            known = ", ".join(f"{n.id} ({n.address})" for n in nodes if n.alive)
            raise AgentNotFound(f"no live node {node!r}; live nodes: {known}")
        target = match[0].id
        async with asyncio.timeout(120):
            await mesh.drain_node(target)
    print(f"node {target} drained and left")


async def _stop(args: argparse.Namespace) -> None:
    """Stop the agent registered as ``name``, wherever it runs."""
    async with _joined(args) as mesh:
        ref = await mesh.get(args.name)
        await ref.stop()
    print(f"agent {args.name!r} stopped")


async def _status(args: argparse.Namespace) -> None:
    async with _joined(args) as mesh:
        nodes = [n for n in await mesh.nodes() if n.id != mesh.node_id]
        waiting, failures = await mesh.placement_report()
    if args.json:
        view = {"nodes": [asdict(n) for n in nodes], "waiting": waiting, "failures": failures}
        print(json.dumps(view, indent=2))
        return
    print("\n".join(node_table(nodes)))
    print(f"placement: {waiting} spawn(s) waiting for room")
    if failures:
        print("latest placement failures:")
        for failure in failures[-5:]:
            print(textwrap.indent(failure, "  "))


async def _dashboard(args: argparse.Namespace) -> None:
    """``dashboard``: join the cluster as a driver and serve its web page until told
    to stop."""
    async with _joined(args) as mesh:
        dashboard = Dashboard(
            mesh, host=args.host, port=args.port, interval=args.interval, timeout=args.timeout
        )
        async with dashboard:
            print(dashboard.url, flush=True)
            await _stop_on_signals().wait()


async def _list_agents(args: argparse.Namespace) -> None:
    """``list agents``: every live agent of the cluster (of a node, of a class)."""
    async with _joined(args) as mesh:
        listing = await mesh.list_agents(
            node=args.node, agent_class=args.agent_class, timeout=args.timeout
        )
    if args.json:
        view = {
            "agents": [asdict(a) for a in listing.agents],
            "unreachable": listing.unreachable,
            "truncated": listing.truncated,
        }
        print(json.dumps(view, indent=2))
    else:
        print("\n".join(agent_table(listing.agents)))
    for node, why in listing.unreachable.items():
        print(f"agentmesh list: node {node} did not answer: {why}", file=sys.stderr)
    for node, count in listing.truncated.items():
        print(f"agentmesh list: node {node} has {count} such agents; listed the oldest")


def _tls(args: argparse.Namespace) -> TLS | None:
    if not (args.tls_cert or args.tls_key or args.tls_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        print("agentmesh: TLS needs both --tls-cert and --tls-key", file=sys.stderr)
        sys.exit(2)
    return TLS(args.tls_cert, args.tls_key, args.tls_ca)


_TOKEN_HELP = "cluster token (default: $AGENTMESH_TOKEN); needed beyond loopback"
_HEAD_ADDRESS = "127.0.0.1:7470"


def _connection_options() -> argparse.ArgumentParser:
    """The options every command has: how to prove it belongs to the cluster."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--token", help=_TOKEN_HELP)
    options.add_argument("--tls-cert", help="this node's certificate (PEM): TLS between nodes")
    options.add_argument("--tls-key", help="its private key (PEM)")
    options.add_argument("--tls-ca", help="the CA that signs peers' certificates (PEM)")
    return options


def _daemon_options(connection: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options ``head`` and ``node`` share, their defaults the library's own."""
    options = argparse.ArgumentParser(add_help=False, parents=[connection])
    options.add_argument(
        "--advertise",
        help="HOST or HOST:PORT other nodes dial (default: the --listen host; this "
        "machine's hostname if that is 0.0.0.0 or ::)",
    )
    options.add_argument(
        "--resources", type=_resources, help="e.g. cpu=8,gpu=1 (default: this machine)"
    )
    options.add_argument("--labels", type=_labels, default={}, help="e.g. zone=eu,tier=gpu")
    options.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        metavar="SECONDS",
        help=f"seconds between heartbeats (default {DEFAULT_HEARTBEAT:g})",
    )
    options.add_argument(
        "--slow-turn",
        type=float,
        default=DEFAULT_SLOW_TURN,
        metavar="SECONDS",
        help="warn on stderr, naming the agent and method, when a turn blocks the event "
        f"loop this long (default {DEFAULT_SLOW_TURN:g}; 0: off)",
    )
    options.add_argument(
        "--dead-after",
        type=float,
        default=DEFAULT_DEAD_AFTER,
        metavar="SECONDS",
        help="head: seconds of silence before a node is declared dead; node: how long it "
        "waits for the head to answer a heartbeat (give it the head's value); more than "
        f"--heartbeat (default {DEFAULT_DEAD_AFTER:g})",
    )
    options.add_argument(
        "--log-level",
        choices=logs.LEVELS,
        default="warning",
        help="log records at this level and above to stderr (default warning)",
    )
    options.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help="text: time, level, logger, message; json: one object per line (default text)",
    )
    options.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve this node's metrics for Prometheus on PORT (0: any; printed as a "
        "second line, 'metrics URL'); needs agentmesh[prometheus]",
    )
    options.add_argument(
        "--state",
        metavar="FILE",
        help="keep agents' snapshots and durable reminders in this SQLite file, which "
        "outlives the daemon; nodes given the same file share them (default: in memory)",
    )
    options.add_argument(
        "--tracing",
        action="store_true",
        help="record spans of asks, tells, publishes and turns (OpenTelemetry: the otel "
        "extra), exported as the OTEL_* environment variables say (docs/observability.md)",
    )
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentmesh", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    connection = _connection_options()
    daemon = _daemon_options(connection)
    head = commands.add_parser(
        "head", parents=[daemon], help="run a head node (control plane and agents)"
    )
    head.add_argument("--listen", default=_HEAD_ADDRESS, help="HOST:PORT (port 0: any)")
    head.add_argument(
        "--dashboard-port",
        type=_port,
        metavar="PORT",
        help="serve the cluster's dashboard (a web page) on PORT (0: any; printed as "
        "'dashboard URL' after the address and metrics lines)",
    )
    head.add_argument(
        "--dashboard-host",
        type=_host,
        default="127.0.0.1",
        metavar="HOST",
        help="where the dashboard listens (default 127.0.0.1: it has no authentication)",
    )
    head.add_argument(
        "--forget-dead-after",
        type=float,
        default=DEFAULT_FORGET_DEAD_AFTER,
        metavar="SECONDS",
        help="seconds a dead node stays listed (down) in status "
        f"(default {DEFAULT_FORGET_DEAD_AFTER:g})",
    )
    node = commands.add_parser("node", parents=[daemon], help="run a worker node that joins a head")
    node.add_argument("--join", required=True, help="the head's HOST:PORT")
    node.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT this node serves")
    status = commands.add_parser(
        "status", parents=[connection], help="show nodes, resources, labels and load"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    listing = commands.add_parser("list", help="list what runs in the cluster")
    what = listing.add_subparsers(dest="what", required=True)
    agents = what.add_parser(
        "agents", parents=[connection], help="every live agent, from every live node"
    )
    agents.add_argument("--node", help="only this node's agents (a node id)")
    agents.add_argument(
        "--class", dest="agent_class", metavar="CLASS", help="only agents of this class"
    )
    agents.add_argument("--json", action="store_true", help="print JSON")
    agents.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long each node has to answer (default 5)",
    )
    drain = commands.add_parser(
        "drain",
        parents=[connection],
        help="ask a node to hand its agents over and leave, and wait until it has",
    )
    drain.add_argument("node", help="the node's id or address")
    stop = commands.add_parser(
        "stop", parents=[connection], help="stop the agent registered under a name"
    )
    stop.add_argument("name", help="the agent's name")
    dashboard = commands.add_parser(
        "dashboard",
        parents=[connection],
        help="serve a live web page of the cluster: nodes, agents, supervision, failures, "
        "traces (prints its URL)",
    )
    dashboard.add_argument(
        "--host",
        type=_host,
        default="127.0.0.1",
        help="where the page is served (default 127.0.0.1: it has no authentication)",
    )
    dashboard.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"the page's port (default {DEFAULT_PORT}; 0: any)",
    )
    dashboard.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="how often the page updates (default 1)",
    )
    dashboard.add_argument(
        "--timeout",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="how long each node has to answer an update (default 2)",
    )
    for client in (status, agents, drain, stop, dashboard):
        client.add_argument("--address", default=_HEAD_ADDRESS, help="the head's HOST:PORT")
    return parser


def _check_timing(args: argparse.Namespace) -> None:
    """A daemon's heartbeat must come well within its ``--dead-after`` (a usage
    error, said as one, rather than the `MeshConfig` check's traceback)."""
    why = None
    if not 0 < args.heartbeat < args.dead_after:
        why = (
            f"--heartbeat ({args.heartbeat:g}s) must be positive and less than --dead-after "
            f"({args.dead_after:g}s); give a node the --dead-after its head has"
        )
    elif args.command == "head" and not args.forget_dead_after > 0:
        why = "--forget-dead-after takes a positive number of seconds"
    if why is not None:
        print(f"agentmesh {args.command}: {why}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command in ("head", "node"):
        _check_timing(args)
        _daemon(args)
        return
    _log_to_stderr()
    clients = {
        "status": _status,
        "list": _list_agents,
        "drain": _drain,
        "stop": _stop,
        "dashboard": _dashboard,
    }
    name = "list agents" if args.command == "list" else args.command
    try:
        run(clients[args.command](args))
    except _Fatal as exc:
        print(f"agentmesh {name}: {exc}", file=sys.stderr)
        sys.exit(1)
    except (AgentmeshError, OSError, TimeoutError) as exc:
        print(f"agentmesh {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


def _daemon(args: argparse.Namespace) -> None:
    """``head`` or ``node``: serve until told to stop."""
    formatter = _log_to_stderr(args.log_level, args.log_format)
    try:
        if args.command == "head":
            mesh = Mesh(
                listen=args.listen,
                advertise=args.advertise,
                token=args.token,
                resources=args.resources,
                labels=args.labels,
                tls=_tls(args),
                heartbeat=args.heartbeat,
                dead_after=args.dead_after,
                forget_dead_after=args.forget_dead_after,
                slow_turn=_slow_turn(args),
                metrics_port=args.metrics_port,
                tracing=args.tracing,
                state_store=None if args.state is None else SqliteStateStore(args.state),
            )
        else:
            resources = args.resources if args.resources is not None else machine_resources()
            mesh = Mesh(
                join=args.join,
                listen=args.listen,
                advertise=args.advertise,
                token=args.token,
                resources=resources,
                labels=args.labels,
                tls=_tls(args),
                heartbeat=args.heartbeat,
                dead_after=args.dead_after,
                slow_turn=_slow_turn(args),
                role="worker",
                metrics_port=args.metrics_port,
                tracing=args.tracing,
                state_store=None if args.state is None else SqliteStateStore(args.state),
            )
        if formatter is not None:
            formatter.node = mesh.node_id
        if args.command == "head":
            run(_serve(mesh, args.dashboard_host, args.dashboard_port))
        else:
            run(_serve(mesh))
    # RuntimeError: a bind failure; ImportError: --metrics-port or --tracing without
    # its extra; sqlite3.Error: a --state file that cannot be opened.
    except (AgentmeshError, OSError, RuntimeError, ImportError, sqlite3.Error) as exc:
        print(f"agentmesh {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
