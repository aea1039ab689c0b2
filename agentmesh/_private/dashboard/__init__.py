"""The dashboard: a web page of a running cluster, served by ``agentmesh dashboard``,
``agentmesh head --dashboard-port`` or `Dashboard` in a program.

``snapshot.py`` gathers what it shows (the JSON), ``http.py`` is the small HTTP
server, ``app.py`` ties them to a `Mesh`, and ``static/index.html`` is the page.
"""

from .app import DEFAULT_PORT, Dashboard

__all__ = ["DEFAULT_PORT", "Dashboard"]
