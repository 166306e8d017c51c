"""mpicloud: MPI clusters from one spec, and jobs pushed through them over SSH."""

__version__ = "0.1.0"
