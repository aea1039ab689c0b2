"""Simulation, above the mesh: environments, the lockstep runner, virtual time."""
