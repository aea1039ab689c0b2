"""agentmesh's benchmark suite: `make bench` (or `python -m benchmarks`).

Every agentmesh figure is printed beside the raw limit of the same machine, measured in
the same run, as a ratio: only ratios hold on a shared, noisy machine.
"""

import os
import sys

if "--ray" in sys.argv:
    # Ray's threads call into gRPC in this process, and gRPC's fork handlers then log a
    # line at each subprocess the suite starts; the suite never forks without exec.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
