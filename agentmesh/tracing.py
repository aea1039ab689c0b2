"""agentmesh.tracing: message lineage as OpenTelemetry traces.

With tracing on, every ask, tell and publish carries the W3C trace context of the
span that sent it, in process and across nodes, so one request that fans out through
many agents on many nodes is one trace: a span per ask, tell, publish and turn, each
turn a child of the span that sent its message, with the time that message waited in
the mailbox. Needs the ``otel`` extra (``pip install 'agentmesh[otel]'``); off (the
default), it costs one check per message and imports nothing. See
docs/observability.md.

Example::

    from opentelemetry.sdk.trace import TracerProvider
    import agentmesh.tracing

    agentmesh.tracing.enable(TracerProvider())  # or Mesh(tracing=True), agentmesh node --tracing
"""

from ._private.tracing import disable, enable, enabled

__all__ = ["disable", "enable", "enabled"]
