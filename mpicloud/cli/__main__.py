"""`python -m mpicloud.cli`."""

from mpicloud.cli.app import main

main()
