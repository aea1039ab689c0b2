"""agentmesh's benchmark suite: `make bench` (or `python -m benchmarks`).

Every agentmesh figure is printed beside the raw limit of the same machine, measured in
the same run, as a ratio: only ratios hold on a shared, noisy machine.
"""
