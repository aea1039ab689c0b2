"""agentmesh's benchmark suite: `make bench` (or `python -m benchmarks`).

Every agentmesh figure is printed beside the raw limit of the same machine, measured in
the same run, as a ratio: only ratios hold on a shared, noisy machine.
"""

import os

# Once gRPC is busy in this process (a cross-node workload, or Ray's threads), its
# fork handlers log a line at every node or server process the suite starts. The suite
# never forks without exec, so it needs no fork support; set before gRPC is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
