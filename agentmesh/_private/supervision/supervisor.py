"""`Supervisor`: an agent that starts, watches and restarts its children, as in OTP."""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, cast

from ..kernel.agent import Agent
from ..kernel.cell import Cell, State
from ..kernel.errors import (
    AgentmeshError,
    AgentUnavailable,
    NameTaken,
    RestartIntensityExceeded,
    SpawnManyError,
)
from ..kernel.exits import ABNORMAL, ExitReason, Terminated
from ..kernel.placing import OnNode, PlacementRequest, Ticket
from ..kernel.ports import ChildHandle, RemoteChildHandle
from ..kernel.ref import AgentRef
from .spec import ChildSpec, Restart, SupervisorSpec

__all__ = ["ChildInfo", "Supervisor", "claim_batch", "settle", "takes_restart"]

log = logging.getLogger("agentmesh.supervisor")


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One child as its supervisor sees it (OTP's ``which_children``).

    ``state`` is the child's lifecycle state (``running``, ``restarting`` …, or
    ``stopped``/``crashed`` once it ended for good); ``restarts`` counts restarts by
    this supervisor; ``dynamic`` is True for children added after the supervisor
    started (``spawn(..., supervisor=sup)`` or ``start_child``).
    """

    ref: AgentRef
    name: str | None
    agent_class: str
    restart: str
    state: str
    restarts: int
    last_error: str | None
    dynamic: bool


class _Child:
    """A supervisor's record of one child, and the child's exit listener.

    ``cell`` is the child's `Cell` when it lives on this node, or a stand-in when it
    lives on another: a kernel `ChildHandle` either way (``remote`` tells which).
    """

    __slots__ = ("_spec", "batch", "cell", "dynamic", "early", "key", "supervisor")

    def __init__(self, supervisor: Cell, key: int, spec: ChildSpec | None, dynamic: bool) -> None:
        self.supervisor = supervisor
        self.key = key
        self._spec = spec  # None: a plain child (`Supervisor._start_plain`), see `spec`
        self.dynamic = dynamic
        self.cell: ChildHandle | None = None
        #: An exit notice from a child on another node that came before the reply
        #: saying it started (kept, and handled once it has).
        self.early: tuple[Any, ...] | None = None
        #: The batch it was started in (`Supervisor._start_children`), if any.
        self.batch: int | None = None

    def started(self, cell: ChildHandle) -> None:
        """The child is running (``cell``: its cell or stand-in); an exit notice that
        overtook the news is handled now, in a turn of the supervisor."""
        self.cell = cell
        if self.early is not None:
            early, self.early = self.early, None
            self.supervisor.deliver_notice("!child_exited", self.key, *early)

    @property
    def spec(self) -> ChildSpec:
        """How it is started. A plain child's is made from its cell when first asked
        for (most never are): an anonymous temporary agent of this node."""
        spec = self._spec
        if spec is None:
            cell = cast("Cell", self.cell)
            factory = functools.partial(cell.cls, **cell.kwargs) if cell.kwargs else cell.cls
            spec = self._spec = ChildSpec(
                factory,
                *cell.args,
                restart="temporary",
                mailbox_size=cell.mailbox.capacity,
                concurrency=cell.concurrency,
            )
        return spec

    @property
    def restart(self) -> Restart:
        return "temporary" if self._spec is None else self._spec.restart

    @property
    def shutdown(self) -> float | None:
        """Its stop timeout (None: the node's)."""
        return None if self._spec is None else self._spec.shutdown

    @property
    def alive(self) -> bool:
        return self.cell is not None and self.cell.state not in (State.STOPPED, State.CRASHED)

    @property
    def supervisor_id(self) -> str:
        """The supervisor's id (`AgentInfo.supervisor` of the child)."""
        return self.supervisor.id

    def __call__(self, cell: Cell, reason: ExitReason, error: str | None) -> bool:
        # Runs inside the child's runner: decide at once whether the child waits for
        # a restart, then let the supervisor act in a turn of its own.
        supervisor = self.supervisor
        open_ = supervisor.state in (State.RUNNING, State.STARTING)
        wanted = not cell.stop_requested  # a stop asked for is never undone by a restart
        takes = open_ and wanted and takes_restart(self.restart, reason)
        if open_:
            supervisor.deliver_notice("!child_exited", self.key, reason, error, takes)
        return takes


# Child keys are unique in the process, so a notice about a child of an earlier
# instance of a restarted supervisor never matches a child of the new one.
_KEYS = itertools.count()
_BATCHES = itertools.count()


def _request_of(spec: ChildSpec) -> PlacementRequest:
    """What placing ``spec`` asks the scheduler (its ``node``, if any, as a rule)."""
    if spec.node is None:
        return spec.placement
    return replace(spec.placement, strategy=OnNode(spec.node))


async def settle(
    outcomes: Sequence[AgentRef | Exception], specs: Sequence[ChildSpec], node: Any
) -> list[AgentRef]:
    """The refs of a batch that started whole; else stop those that started (all at
    once) and raise `SpawnManyError` naming each failure by its place in the batch."""
    failed = {i: o for i, o in enumerate(outcomes) if isinstance(o, Exception)}
    refs = [o for o in outcomes if isinstance(o, AgentRef)]
    if not failed:
        return refs
    if refs:
        results = await asyncio.gather(
            *(node.stop_agent(ref, None) for ref in reversed(refs)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, AgentmeshError):
                raise result
    # One error may stand for several agents (all those bound for a node it could
    # not reach): each distinct error once, with the places of its agents.
    places: dict[int, tuple[Exception, list[int]]] = {}
    for i, exc in failed.items():
        places.setdefault(id(exc), (exc, []))[1].append(i)
    lines: list[str] = []
    for exc, indexes in places.values():
        where = ", ".join(_place(i, specs[i].name) for i in indexes[:_FAILURES_SHOWN])
        if len(indexes) > _FAILURES_SHOWN:
            where += f" and {len(indexes) - _FAILURES_SHOWN:,} more"
        exc.add_note(f"{'agent' if len(indexes) == 1 else 'agents'} {where} of the batch")
        if len(lines) < _FAILURES_SHOWN:
            first = (str(exc).splitlines() or [""])[0]
            lines.append(f"  {where}: {type(exc).__name__}: {first}")
    if len(places) > _FAILURES_SHOWN:
        lines.append(f"  and {len(places) - _FAILURES_SHOWN:,} more errors")
    were = "was" if len(refs) == 1 else "were"
    stopped = f" ({len(refs)} started and {were} stopped again)" if refs else ""
    message = f"{len(failed):,} of {len(outcomes):,} agents did not start{stopped}:\n"
    raise SpawnManyError(message + "\n".join(lines), failed, len(refs))


_FAILURES_SHOWN = 8


def _place(index: int, name: str | None) -> str:
    return f"#{index}" + ("" if name is None else f" ({name!r})")


async def claim_batch(
    node: Any, outcomes: Sequence[AgentRef | Exception | None]
) -> list[AgentRef | Exception | None]:
    """After a batch started on ``node`` with ``claim_name=False``: claim the names of
    those that started, cluster-wide, in one request. An agent whose name another
    agent holds (or whose claim failed) is stopped, its outcome the error, as a
    single spawn's would be."""
    out = list(outcomes)
    named = [i for i, o in enumerate(out) if isinstance(o, AgentRef) and o.name is not None]
    if not named or node.claim_names is None:
        return out
    refs: list[AgentRef] = [out[i] for i in named]  # type: ignore[misc]
    try:
        holders: list[Any] = await node.claim_names(refs)
    except Exception as exc:
        holders = [exc] * len(refs)
    for i, ref, holder in zip(named, refs, holders, strict=True):
        if holder == ref:
            cell = node.cell_of(ref)
            if cell is None:
                continue
            try:  # its name is its own now: arm its durable reminders
                await node.reminders.activate(cell)
                continue
            except Exception as exc:
                holder = exc
        if not isinstance(holder, Exception):
            holder = NameTaken(
                f"an agent named {ref.name!r} already exists (on node {holder.node})"
            )
        await node.stop_agent(ref, None)
        out[i] = holder
    return out


def takes_restart(restart: str, reason: ExitReason) -> bool:
    """OTP's table: which exits restart which children (``node_down`` counts as a
    crash)."""
    if restart == "permanent":
        return reason in ABNORMAL or reason == "normal"
    if restart == "transient":
        return reason in ABNORMAL
    return False


class Supervisor(Agent):
    """An agent that supervises children per a `SupervisorSpec`.

    Its one argument is the spec: ``await mesh.spawn(am.Supervisor, spec, name=...)``.
    It starts the spec's children in order before its own spawn returns (if one fails
    to start, those already started are stopped and the spawn fails), restarts them per
    the strategy and restart types, and stops them in reverse order when it stops.
    Trees nest: a child may itself be a `Supervisor`. Add children later with
    ``mesh.spawn(Cls, ..., supervisor=sup)`` or ``await sup.start_child(ChildSpec(...))``.
    """

    _am_notices: ClassVar[dict[str, str]] = {
        **Agent._am_notices,
        "!child_exited": "_child_exited",
    }

    #: A supervisor's stop is bounded by its children's own stop timeouts, one after
    #: the other, not by one timeout for the whole subtree (OTP's ``infinity``).
    _am_unbounded_stop: ClassVar[bool] = True

    def __init__(self, spec: SupervisorSpec) -> None:
        if not isinstance(spec, SupervisorSpec):
            raise TypeError(f"Supervisor takes a SupervisorSpec, got {spec!r}")
        self.spec = spec
        self._children: dict[int, _Child] = {}  # by key, in start order
        self._pending: set[asyncio.Task[None]] = set()  # restarts waiting out a backoff
        self._restart_times: collections.deque[float] = collections.deque()
        self._rng = random.Random()

    async def on_start(self) -> None:
        for child_spec in self.spec.children:
            try:
                await self._start_child(child_spec, dynamic=False)
            except BaseException:
                await self._stop_children(reversed(self._children.values()))
                raise

    async def on_stop(self) -> None:
        for task in self._pending:
            task.cancel()
        await self._stop_children(reversed(self._children.values()))

    async def on_terminated(self, notice: Terminated) -> None:
        """A child on another node is gone with its node: restart it elsewhere."""
        if notice.reason != "node_down":
            return
        child = next(
            (c for c in self._children.values() if c.cell is not None and c.cell.ref == notice.ref),
            None,
        )
        if child is None or child.cell is None or not child.cell.remote:
            return
        cast("RemoteChildHandle", child.cell).node_lost(notice.error)
        taken = takes_restart(child.restart, "node_down")
        await self._child_exited(child.key, "node_down", notice.error, taken)

    async def start_child(self, spec: ChildSpec) -> AgentRef:
        """Start a dynamic child (OTP's ``start_child``) and return its ref."""
        return await self._start_child(spec, dynamic=True)

    async def start_children(self, specs: list[ChildSpec]) -> list[AgentRef]:
        """Start dynamic children in one go (as `Mesh.spawn_many` does) and return
        their refs in order. If one does not start, those that did are stopped and
        `SpawnManyError` lists what failed."""
        specs = list(specs)
        return await settle(await self._start_children(specs), specs, self._am_cell.node)

    async def children(self) -> list[ChildInfo]:
        """Each child's spec, state and restart count, in start order."""
        return [self._info(child) for child in self._children.values()]

    # -- starting and stopping children -------------------------------------------

    async def _start_child(
        self, spec: ChildSpec, *, dynamic: bool, ticket: Ticket | None = None
    ) -> AgentRef:
        """Start ``spec`` where placement says (or on ``spec.node``, or here), with the
        resources of ``ticket`` if the spawner reserved them already."""
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child takes a ChildSpec, got {spec!r}")
        cell = self._am_cell
        if cell.state not in (State.RUNNING, State.STARTING):
            raise AgentUnavailable(f"supervisor {cell.label!r} is {cell.state.value}")
        node = cell.node
        placer = node.placer
        if ticket is None and placer is not None and not spec.placement.is_default:
            request = spec.placement
            if spec.node is not None:
                request = replace(request, strategy=OnNode(spec.node))
            ticket = await placer.reserve(request)
        target = spec.node if ticket is None else ticket.node
        child = _Child(cell, next(_KEYS), spec, dynamic)
        self._children[child.key] = child
        try:
            if target is not None and target != node.id:
                if node.remote_children is None:
                    raise AgentUnavailable(f"node {target} is not reachable: no cluster here")
                handle = await node.remote_children.spawn(spec, cell.ref, child.key, target, ticket)
                child.started(handle)
                return handle.ref
            ref = await node.spawn(
                spec.agent_class,
                spec.args,
                name=spec.name,
                mailbox_size=spec.mailbox_size,
                concurrency=spec.concurrency,
                checkpoint_every=spec.checkpoint_every,
                exit_listener=child,
                reservation=ticket,
                claim_first=spec._claim_first,
                idle_after=spec._idle_after,
            )
        except BaseException:
            del self._children[child.key]
            if ticket is not None and placer is not None:
                placer.release(ticket.key)
            raise
        child.cell = node.cells[ref.id]
        return ref

    def _start_plain(
        self,
        factory: Callable[..., Agent],
        args: tuple[Any, ...],
        mailbox_size: int | None,
        concurrency: int | None,
    ) -> AgentRef | None:
        """Start an anonymous temporary child here without awaiting, if its class has
        nothing to await to start (`Node.spawn_now`): the common `Mesh.spawn`, with no
        ChildSpec made unless asked for (`_Child.spec`). None if it takes the full way
        (nothing was done then)."""
        cell = self._am_cell
        if cell.state not in (State.RUNNING, State.STARTING):
            return None
        child = _Child(cell, next(_KEYS), None, True)
        self._children[child.key] = child
        try:
            ref = cell.node.spawn_now(factory, args, mailbox_size, concurrency, child)
        except BaseException:
            del self._children[child.key]
            raise
        if ref is None:
            del self._children[child.key]
            return None
        child.cell = ref._cell
        return ref

    async def _start_children(
        self, specs: Sequence[ChildSpec], tickets: Sequence[Ticket | None] | None = None
    ) -> list[AgentRef | Exception]:
        """Start dynamic children ``specs`` in one go; return, in order, each one's ref
        or the error that kept it from starting (those leave no trace: no record, no
        reservation). Those that ask for placement and hold no ticket yet are placed
        in one request to the scheduler; those bound for another node go there in one
        message per node, which starts them one after the other; those bound here
        start here, the same way. Cancelled, it stops those it started."""
        for spec in specs:
            if not isinstance(spec, ChildSpec):
                raise TypeError(f"start_children takes ChildSpec objects, got {spec!r}")
        cell = self._am_cell
        if cell.state not in (State.RUNNING, State.STARTING):
            raise AgentUnavailable(f"supervisor {cell.label!r} is {cell.state.value}")
        node = cell.node
        placer = node.placer
        held: list[Ticket | None] = list(tickets) if tickets is not None else [None] * len(specs)
        if placer is not None:
            todo = [
                i for i, s in enumerate(specs) if held[i] is None and not s.placement.is_default
            ]
            if todo:
                got = await placer.reserve_many([_request_of(specs[i]) for i in todo])
                for i, placed in zip(todo, got, strict=True):
                    held[i] = placed
        children = [_Child(cell, next(_KEYS), spec, True) for spec in specs]
        batch = next(_BATCHES)
        for child in children:
            child.batch = batch
        for child in children:
            self._children[child.key] = child
        outcomes: list[AgentRef | Exception | None] = [None] * len(specs)
        groups: dict[str | None, list[int]] = {}
        for i, spec in enumerate(specs):
            chosen = held[i]
            target = spec.node if chosen is None else chosen.node
            groups.setdefault(None if target == node.id else target, []).append(i)

        async def here(indices: list[int]) -> None:
            bulk = node.claim_names is not None
            for i in indices:
                spec = specs[i]
                try:
                    ref = await node.spawn(
                        spec.agent_class,
                        spec.args,
                        name=spec.name,
                        mailbox_size=spec.mailbox_size,
                        concurrency=spec.concurrency,
                        checkpoint_every=spec.checkpoint_every,
                        exit_listener=children[i],
                        reservation=held[i],
                        claim_name=not bulk,
                    )
                except Exception as exc:
                    outcomes[i] = exc
                    continue
                children[i].started(node.cells[ref.id])
                outcomes[i] = ref
            if bulk:
                claimed = await claim_batch(node, [outcomes[i] for i in indices])
                for i, outcome in zip(indices, claimed, strict=True):
                    outcomes[i] = outcome

        async def there(target: str, indices: list[int]) -> None:
            try:
                if node.remote_children is None:
                    raise AgentUnavailable(f"node {target} is not reachable: no cluster here")
                cells = await node.remote_children.spawn_many(
                    target,
                    [specs[i] for i in indices],
                    cell.ref,
                    [children[i].key for i in indices],
                    [held[i] for i in indices],
                )
            except Exception as exc:  # none of them is known to have started
                for i in indices:
                    outcomes[i] = exc
                return
            for i, got in zip(indices, cells, strict=True):
                if isinstance(got, Exception):
                    outcomes[i] = got
                else:
                    children[i].started(got)
                    outcomes[i] = got.ref

        runs = [here(i) if t is None else there(t, i) for t, i in groups.items()]
        try:
            if len(runs) == 1:
                await runs[0]
            else:
                await asyncio.gather(*runs)
        except BaseException:
            started = [
                c for c, o in zip(children, outcomes, strict=True) if isinstance(o, AgentRef)
            ]
            await self._stop_children(reversed(started))
            raise
        finally:
            gone: set[int] = set()
            for child, outcome, reserved in zip(children, outcomes, held, strict=True):
                if not isinstance(outcome, AgentRef):
                    gone.add(child.key)
                    if reserved is not None and placer is not None:
                        placer.release(reserved.key)
            for key in gone:
                self._children.pop(key, None)
        return [o if o is not None else AgentUnavailable("not started") for o in outcomes]

    async def _stop_children(self, children: Iterable[_Child]) -> None:
        """Stop ``children`` one after the other, in the order given; but the children
        of one batch that come together stop as they started: each node its share,
        in that order, the nodes at the same time (one request to each)."""
        node = self._am_cell.node
        run: list[_Child] = []
        for child in list(children):
            if run and child.batch != run[0].batch:
                await self._stop_batch(run)
                run = []
            if child.batch is not None:
                run.append(child)
            elif child.cell is not None:
                await child.cell.stop(child.shutdown or node.shutdown_timeout)
        if run:
            await self._stop_batch(run)

    async def _stop_batch(self, children: list[_Child]) -> None:
        node = self._am_cell.node
        here = [(c, c.cell) for c in children if c.cell is not None and not c.cell.remote]
        there = [(c, c.cell) for c in children if c.cell is not None and c.cell.remote]

        async def stop(handles: list[tuple[_Child, ChildHandle]]) -> None:
            for child, handle in handles:
                await handle.stop(child.shutdown or node.shutdown_timeout)

        if not there or node.remote_children is None:
            await stop(here + there)  # (no cluster: nothing there to stop)
            return
        await asyncio.gather(stop(here), node.remote_children.stop_many([h for _, h in there]))

    # -- restarting -----------------------------------------------------------------

    async def _child_exited(
        self,
        key: int,
        reason: ExitReason,
        error: str | None,
        taken: bool,
        instance: str | None = None,
        traceback: str | None = None,
    ) -> None:
        child = self._children.get(key)
        if child is None:
            return
        if child.cell is None:  # it exited before the news that it started came
            child.early = (reason, error, taken, instance, traceback)
            return
        if instance is not None and instance != child.cell.ref.id:
            # An instance this supervisor no longer owns (it was restarted elsewhere
            # while its node was away): what it says is stale.
            log.info("%s: ignoring the exit of a stale instance %s", self._label, instance)
            return
        if child.cell.remote:  # a child on another node: note what it said
            cast("RemoteChildHandle", child.cell).exited(reason, error, taken, traceback)
        if not taken:
            log.info("%s: child %s exited (%s)", self._label, child.cell.label, reason)
            if child.dynamic and not child.alive:
                del self._children[child.key]
            return
        log.warning("%s: restarting %s after %s", self._label, child.cell.label, error or reason)
        if self._intensity_exceeded():
            await self._give_up(child, error or reason)
        group = self._group(child)
        for sibling in reversed(group):
            if sibling is child or not sibling.alive or sibling.cell is None:
                continue
            if sibling.restart == "temporary":
                await sibling.cell.stop(self._shutdown(sibling))
                del self._children[sibling.key]
            else:
                await sibling.cell.suspend(self._shutdown(sibling))
        group = [c for c in group if c.key in self._children]
        backoff = self.spec.backoff
        if backoff is None:
            await self._restart(group)
            return
        delay = backoff.delay(len(self._restart_times), self._rng)
        task = asyncio.get_running_loop().create_task(self._restart_later(delay, group))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _restart_later(self, delay: float, group: list[_Child]) -> None:
        await asyncio.sleep(delay)
        await self._restart(group)

    async def _restart(self, group: list[_Child]) -> None:
        for child in group:  # in start order
            if child.cell is not None:
                await child.cell.restart()

    def _group(self, child: _Child) -> list[_Child]:
        strategy = self.spec.strategy
        if strategy == "one_for_all":
            return list(self._children.values())
        if strategy == "rest_for_one":
            children = list(self._children.values())
            return children[children.index(child) :]
        return [child]

    def _intensity_exceeded(self) -> bool:
        now = asyncio.get_running_loop().time()
        times = self._restart_times
        times.append(now)
        while times and times[0] <= now - self.spec.period:
            times.popleft()
        return len(times) > self.spec.intensity

    async def _give_up(self, child: _Child, why: str) -> None:
        spec = self.spec
        message = (
            f"supervisor {self._label!r} gave up: more than {spec.intensity} restart(s) "
            f"within {spec.period:g}s; last, {child.spec.class_name} "
            f"{child.cell.label if child.cell else ''!r}: {why}"
        )
        log.error("%s", message)
        if child.cell is not None:
            child.cell.end(State.CRASHED, why)
        await self._stop_children(reversed(self._children.values()))
        raise RestartIntensityExceeded(message)

    # -- reporting --------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return self._am_cell.label

    def _shutdown(self, child: _Child) -> float:
        return child.shutdown or self._am_cell.node.shutdown_timeout

    @staticmethod
    def _info(child: _Child) -> ChildInfo:
        cell = child.cell
        assert cell is not None
        return ChildInfo(
            ref=cell.ref,
            name=cell.name,
            agent_class=child.spec.class_name,
            restart=child.restart,
            state=cell.state.value,
            restarts=cell.restarts,
            last_error=cell.last_error,
            dynamic=child.dynamic,
        )


async def start_directly(
    supervisor: Supervisor, spec: ChildSpec, ticket: Ticket | None = None
) -> AgentRef:
    """Start a dynamic child of a supervisor of this node directly, not through its
    mailbox (as `Supervisor.start_child`), so errors come as they are (NameTaken,
    SpawnError ...): how the mesh starts what it spawns."""
    return await supervisor._start_child(spec, dynamic=True, ticket=ticket)


async def start_many_directly(
    supervisor: Supervisor,
    specs: Sequence[ChildSpec],
    tickets: Sequence[Ticket | None] | None = None,
) -> list[AgentRef | Exception]:
    """`Supervisor.start_children` for a supervisor of this node, directly: each
    child's ref, or the error that kept it from starting."""
    return await supervisor._start_children(specs, tickets)
