"""A real network partition that heals: a worker in a network namespace of its own,
its link cut and restored with ``ip link``, while its process runs on.

The namespace and its veth pair are made and removed by the test (root only; the
addresses are from 198.18.0.0/15, the range set aside for network tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon

from .agents import Counter
from .conftest import start_daemon, wait_for
from .test_membership_faults import DEAD_AFTER, FAST, _hosts_some, _moved, _reach, agents_on

pytestmark = pytest.mark.slow

TOKEN = "partition-test-token"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Netns:
    """A namespace linked to this one by a veth pair: ``outer`` is this side's
    address, ``inner`` the namespace's."""

    name: str
    inner_link: str
    outer: str
    inner: str

    def cut(self) -> None:
        _ip("netns", "exec", self.name, "ip", "link", "set", self.inner_link, "down")

    def heal(self) -> None:
        _ip("netns", "exec", self.name, "ip", "link", "set", self.inner_link, "up")


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    tag = os.getpid() % 100_000
    name, outer_link, inner_link = f"am{tag}", f"am{tag}o", f"am{tag}i"
    # A /30 of 198.18.0.0/15 of this process's own, so parallel runs do not collide.
    a, b = divmod(tag % 16_384 * 4, 256)
    net = f"198.{18 + a // 256}.{a % 256}"
    outer, inner = f"{net}.{b + 1}", f"{net}.{b + 2}"
    try:
        _ip("netns", "add", name)
        _ip("link", "add", outer_link, "type", "veth", "peer", "name", inner_link)
        _ip("link", "set", inner_link, "netns", name)
        _ip("addr", "add", f"{outer}/30", "dev", outer_link)
        _ip("link", "set", outer_link, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{inner}/30", "dev", inner_link)
        _ip("netns", "exec", name, "ip", "link", "set", inner_link, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield Netns(name, inner_link, outer, inner)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", outer_link], capture_output=True, check=False)


@pytest.fixture
async def split_cluster(netns: Netns) -> AsyncIterator[tuple[Daemon, Daemon, Daemon]]:
    """A head and a worker here, and a worker inside ``netns`` (all with a token:
    they listen beyond loopback)."""
    auth = ("--token", TOKEN)
    head = await start_daemon(
        "head", "--listen", f"{netns.outer}:0", "--dead-after", str(DEAD_AFTER), *FAST, *auth
    )
    daemons = [head]
    try:
        join = ("--join", head.address, *FAST, *auth)
        daemons.append(await start_daemon("node", "--listen", f"{netns.outer}:0", *join))
        daemons.append(
            await start_daemon("node", "--listen", f"{netns.inner}:0", *join, netns=netns.name)
        )
        yield head, daemons[1], daemons[2]
    finally:
        netns.heal()  # so the cut-off one can be told to stop
        for daemon in reversed(daemons):
            await daemon.stop()


async def test_a_partition_that_heals_leaves_one_instance(
    netns: Netns, split_cluster: tuple[Daemon, Daemon, Daemon]
) -> None:
    head, here, there = split_cluster
    async with am.Mesh(
        join=head.address, listen=f"{netns.outer}:0", token=TOKEN, ask_timeout=10
    ) as mesh:
        by_address = {n.address: n.id for n in await mesh.nodes()}
        n_here, n_there = by_address[here.address], by_address[there.address]
        spec = am.SupervisorSpec(children=[am.ChildSpec(Counter, 10, name="mover", node=n_there)])
        sup = await mesh.spawn(am.Supervisor, spec, name="tree", node=mesh.node_id)
        old = await mesh.get("mover")
        assert await old.add(1) == 11

        netns.cut()  # the worker runs on, cut off from everyone
        await wait_for(lambda: _moved(mesh, n_there), timeout=20, what="restarted here")
        moved = await mesh.get("mover")
        assert moved.node == n_here
        netns.heal()

        probe = await _reach(mesh, n_there)  # it rejoined, and this driver reaches it
        with pytest.raises(am.AgentUnavailable):
            await old.get()
        await wait_for(lambda: _hosts_some(mesh, n_there), timeout=10, what="it reports")
        assert await agents_on(mesh, n_there) == 1, "a stale instance still runs there"
        [child] = await sup.children()
        assert (child.state, child.restarts, child.ref) == ("running", 1, moved)
        assert await moved.add(1) == 11
        assert await probe.get() == 0
        assert "fencing node" in there.log.decode()
