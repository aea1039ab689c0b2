"""What this machine offers by default: its cores and its memory."""

from __future__ import annotations

import os

__all__ = ["machine_resources"]


def machine_resources() -> dict[str, float]:
    """``cpu`` (cores) and ``memory`` (bytes) of this machine, as far as it says."""
    resources = {"cpu": float(os.cpu_count() or 1)}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        resources["memory"] = float(pages * size)
    except (ValueError, OSError, AttributeError):
        pass
    return resources
