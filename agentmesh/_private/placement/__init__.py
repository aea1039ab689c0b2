"""Placement: which node hosts each agent (pure decisions, and the head's state)."""
