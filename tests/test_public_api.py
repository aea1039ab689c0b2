"""The public surface is exactly what we mean it to be."""

from __future__ import annotations

import agentmesh as am

EXPECTED = {
    "Agent",
    "AgentInfo",
    "AgentListing",
    "Backoff",
    "BusStatistics",
    "DEAD_LETTERS",
    "DeadLetter",
    "TopicStream",
    "subscribe",
    "ChildInfo",
    "ChildSpec",
    "MemoryStateStore",
    "RestartIntensityExceeded",
    "SqliteStateStore",
    "StateStore",
    "Supervisor",
    "SupervisorSpec",
    "TLS",
    "Terminated",
    "AgentNotFound",
    "AgentRef",
    "AgentUnavailable",
    "AgentmeshError",
    "Ask",
    "AskTimeout",
    "AuthError",
    "BadArguments",
    "DEFAULT_ASK_TIMEOUT",
    "DEFAULT_MAILBOX_SIZE",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "MailboxFull",
    "Mesh",
    "MeshConfig",
    "MethodRef",
    "NodeInfo",
    "NameTaken",
    "PlacementError",
    "RemoteError",
    "SerializationError",
    "SpawnError",
    "SpawnManyError",
    "Stream",
    "StreamMismatch",
    "UnknownMethod",
    "WrongLoop",
    "DEFAULT_SLOW_TURN",
    "NameRequired",
    "Reminder",
    "Timer",
    "VirtualRef",
    "run",
    "AwayFrom",
    "DEFAULT_PLACEMENT_TIMEOUT",
    "DoesNotExist",
    "Exists",
    "In",
    "Near",
    "NotIn",
    "OnNode",
}


def test_all_is_sorted_and_complete() -> None:
    assert am.__all__ == sorted(am.__all__)
    assert set(am.__all__) == EXPECTED
    for name in am.__all__:
        assert getattr(am, name) is not None


def test_errors_share_a_base_and_keep_their_meaning() -> None:
    errors = [getattr(am, n) for n in am.__all__ if n.endswith(("Error", "Timeout"))]
    errors += [am.AgentNotFound, am.AgentUnavailable, am.MailboxFull, am.NameTaken]
    errors += [am.UnknownMethod, am.BadArguments]
    assert all(issubclass(e, am.AgentmeshError) for e in errors)
    assert issubclass(am.AskTimeout, TimeoutError)
    assert issubclass(am.SpawnError, am.RemoteError)
    assert issubclass(am.UnknownMethod, AttributeError)
    assert issubclass(am.BadArguments, TypeError)
    assert issubclass(am.WrongLoop, RuntimeError)


def test_errors_pickle_with_their_fields() -> None:
    import pickle

    err = am.RemoteError("agent", "ValueError", "bad", "Traceback ...")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.agent, copy.remote_type, copy.remote_message) == ("agent", "ValueError", "bad")
    assert str(copy) == str(err)
    plain = pickle.loads(pickle.dumps(am.AgentUnavailable("gone")))
    assert str(plain) == "gone"


def test_the_simulation_surface_is_sorted_and_complete() -> None:
    from agentmesh import sim

    assert sim.__all__ == sorted(sim.__all__)
    for name in sim.__all__:
        assert getattr(sim, name) is not None
    assert {"Env", "Policy", "run_episode", "run_episodes", "plot", "plot_png"} <= set(sim.__all__)
