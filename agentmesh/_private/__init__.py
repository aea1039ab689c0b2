"""Internals of agentmesh. Nothing here is public API; import from `agentmesh`."""
