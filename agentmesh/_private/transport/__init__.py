"""The gRPC transport: codecs, the peer handshake, and streams between nodes.

The only package that imports grpc and the generated wire code (``agentmesh.v1``).
It implements the kernel's `Transport` seam.
"""
