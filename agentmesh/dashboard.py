"""agentmesh.dashboard: a live web page of a cluster, and its JSON.

The page shows the nodes (resources used and total, up, draining or down, uptime),
the agents (mailbox depth, messages handled per second), the supervision trees,
recent failures (agents' crashes with their tracebacks, placement failures) and the
latest traces when tracing is on; it polls ``/api/snapshot``, a JSON view that
scripts can read too. Standard library only. See docs/observability.md#dashboard.

Example::

    import agentmesh as am
    from agentmesh.dashboard import Dashboard

    async with am.Mesh() as mesh, Dashboard(mesh, port=0) as dashboard:
        print(dashboard.url)  # open it in a browser

From a shell: ``agentmesh dashboard --address HEAD`` or ``agentmesh head
--dashboard-port 7480``.
"""

from ._private.dashboard import DEFAULT_PORT, Dashboard

__all__ = ["DEFAULT_PORT", "Dashboard"]
