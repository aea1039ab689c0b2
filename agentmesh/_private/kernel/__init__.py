"""The single-process kernel: agents, refs, mailboxes, the local registry, and the
transport seam with its in-memory implementation.

The kernel imports neither grpc nor any higher layer, so one node, the tests and the
simulations run without sockets.
"""
