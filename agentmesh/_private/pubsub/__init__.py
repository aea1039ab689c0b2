"""Pub/sub: topics, patterns, typed payloads and dead letters, on one node.

Sits above the kernel (it delivers through agents' mailboxes) and below the mesh.
"""
