"""The ``agentmesh`` command: ``head``, ``node``, ``status``, ``drain`` and ``stop``.

Daemons print the address they bound as their first line of output (so ``--listen
127.0.0.1:0`` works for scripts), then serve until SIGTERM or SIGINT or a drain
request (``agentmesh drain NODE``), when they hand over the agents supervisors on
other nodes own (those start again elsewhere), stop the rest and leave the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import textwrap
from dataclasses import asdict
from typing import Any

from .cluster.directory import DEFAULT_DEAD_AFTER, DEFAULT_HEARTBEAT
from .kernel.errors import AgentmeshError, AgentNotFound
from .kernel.node import DEFAULT_SLOW_TURN
from .mesh import Mesh
from .placement.resources import machine_resources
from .running import run
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


def _slow_turn(args: argparse.Namespace) -> float | None:
    """``--slow-turn``: seconds, and 0 turns the watchdog off."""
    if args.slow_turn < 0:
        print("agentmesh: --slow-turn takes 0 (off) or more seconds", file=sys.stderr)
        sys.exit(2)
    return args.slow_turn or None


def _log_to_stderr() -> None:
    """The command is an application: WARNINGs and ERRORs go to stderr, as messages.

    The library has only a `logging.NullHandler` (a program that configures no logging
    sees nothing), so the command configures logging, unless something already has.
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


async def _serve(mesh: Mesh) -> None:
    async with mesh:
        print(mesh.address, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        waits = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(mesh.wait_drain_request()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        await mesh.drain()


async def _drain(address: str, token: str | None, node: str, tls: TLS | None) -> None:
    """Ask a node (by id or address) to drain, and wait until it has left."""
    async with Mesh(join=address, token=token, tls=tls) as mesh:
        nodes = await mesh.nodes()
        match = [n for n in nodes if n.alive and node in (n.id, n.address)]
        if not match:
            known = ", ".join(f"{n.id} ({n.address})" for n in nodes if n.alive)
            raise AgentNotFound(f"no live node {node!r}; live nodes: {known}")
        target = match[0].id
        async with asyncio.timeout(120):
            await mesh.drain_node(target)
    print(f"node {target} drained and left")


async def _stop(address: str, token: str | None, name: str, tls: TLS | None) -> None:
    """Stop the agent registered as ``name``, wherever it runs."""
    async with Mesh(join=address, token=token, tls=tls) as mesh:
        ref = await mesh.get(name)
        await ref.stop()
    print(f"agent {name!r} stopped")


def _amount(name: str, value: float) -> str:
    if name == "memory" and value >= 2**30:
        return f"{value / 2**30:.1f}GiB"
    return f"{value:g}"


async def _status(address: str, token: str | None, as_json: bool, tls: TLS | None) -> None:
    async with Mesh(join=address, token=token, tls=tls) as mesh:
        nodes = [n for n in await mesh.nodes() if n.id != mesh.node_id]
        waiting, failures = await mesh.placement_report()
    if as_json:
        view = {"nodes": [asdict(n) for n in nodes], "waiting": waiting, "failures": failures}
        print(json.dumps(view, indent=2))
        return
    print(
        f"{'node':10} {'role':7} {'state':5} {'address':22} {'agents':>6} {'queued':>6} "
        f"{'held':>5} {'refused':>7}  resources used/total, labels"
    )
    for n in nodes:
        state = ("drain" if n.draining else "up") if n.alive else "down"
        extra = ", ".join(
            f"{k}={_amount(k, n.used.get(k, 0.0))}/{_amount(k, v)}" for k, v in n.resources.items()
        )
        if n.labels:
            extra += "  " + ", ".join(f"{k}={v}" for k, v in n.labels.items())
        print(
            f"{n.id:10} {n.role:7} {state:5} {n.address:22} {n.agents:>6} "
            f"{n.mailbox_depth:>6} {n.held:>5} {n.refused:>7}  {extra}"
        )
    print(f"placement: {waiting} spawn(s) waiting for room")
    if failures:
        print("latest placement failures:")
        for failure in failures[-5:]:
            print(textwrap.indent(failure, "  "))


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
        "--dead-after",
        type=float,
        default=DEFAULT_DEAD_AFTER,
        metavar="SECONDS",
        help=f"seconds of silence before a node is dead (default {DEFAULT_DEAD_AFTER:g})",
    )
    node = commands.add_parser("node", parents=[daemon], help="run a worker node that joins a head")
    node.add_argument("--join", required=True, help="the head's HOST:PORT")
    node.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT this node serves")
    status = commands.add_parser(
        "status", parents=[connection], help="show nodes, resources, labels and load"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
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
    for client in (status, drain, stop):
        client.add_argument("--address", default=_HEAD_ADDRESS, help="the head's HOST:PORT")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    _log_to_stderr()
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
                slow_turn=_slow_turn(args),
                tracing=args.tracing,
            )
            run(_serve(mesh))
        elif args.command == "node":
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
                slow_turn=_slow_turn(args),
                role="worker",
                tracing=args.tracing,
            )
            run(_serve(mesh))
        elif args.command == "drain":
            run(_drain(args.address, args.token, args.node, _tls(args)))
        elif args.command == "stop":
            run(_stop(args.address, args.token, args.name, _tls(args)))
        else:
            run(_status(args.address, args.token, args.json, _tls(args)))
    # RuntimeError: a bind failure; ImportError: --tracing without OpenTelemetry.
    except (AgentmeshError, OSError, RuntimeError, ImportError) as exc:
        print(f"agentmesh {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
