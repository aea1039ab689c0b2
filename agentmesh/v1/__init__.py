"""Generated wire code for protos/agentmesh/v1 (``make proto``). Do not edit the
``*_pb2*`` files by hand; only the transport and codec modules import them."""
