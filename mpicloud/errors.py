"""The one error tree of mpicloud: library code raises these, only the CLI prints them."""


class MpicloudError(Exception):
    """Base of every expected error; its message is one line a user can act on."""


class SpecError(MpicloudError):
    """A cluster spec is invalid; carries every problem with its field path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class RenderError(MpicloudError):
    """A template or artifact could not be rendered from the spec."""


class TransportError(MpicloudError):
    """Talking to a cluster over SSH/SFTP failed."""


class ConnectError(TransportError):
    """A connection (or proxy hop) could not be established or authenticated."""


class HostKeyError(TransportError):
    """A host presented a key that differs from the pinned one, or an unknown key."""


class CommandFailed(TransportError):
    """A remote command exited non-zero where success was required."""

    def __init__(self, command: str, exit_code: int, stderr: str) -> None:
        self.exit_code = exit_code
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        super().__init__(f"remote command {command!r} exited {exit_code}" + (f": {tail[0]}" if tail else ""))


class ClusterError(MpicloudError):
    """A cluster is unknown, not running, or could not be started or stopped."""


class JobError(MpicloudError):
    """A job is unknown, or could not be submitted, fetched or cancelled."""
