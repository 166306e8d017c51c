"""The client<->node protocol: stdlib-only modules shipped to every node beside the runner.

The runner, the transfer helper and the bucket client on the nodes import these modules from the copy
installed next to them (``<runner dir>/mpicloud/protocol/``); the client imports the same files from the
installed package. Nothing in this package may import anything outside the standard library.
"""
