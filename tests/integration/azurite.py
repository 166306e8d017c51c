"""A real Azurite blob server (the Azure Storage emulator, npm package `azurite`) on loopback, telemetry off."""

from __future__ import annotations

import datetime
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient, ContainerSasPermissions, generate_container_sas

from tests.integration.proxies import end_process, free_port

#: Azurite's built-in development account and its documented, public key
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class BlobWorld:
    """The Azurite endpoint (http://127.0.0.1:PORT/devstoreaccount1) with the account key."""

    endpoint: str

    def container(self, name: str) -> ContainerClient:
        """A client for one container, signed with the account key (the customer's admin view)."""
        return BlobServiceClient(self.endpoint, credential={"account_name": ACCOUNT, "account_key": KEY}) \
            .get_container_client(name)

    def sas(self, container: str, permission: str = "rlcw", hours: float = 1) -> str:
        """A container SAS; negative hours make one that has already expired."""
        now = datetime.datetime.now(datetime.UTC)
        return generate_container_sas(ACCOUNT, container, account_key=KEY,
                                      permission=ContainerSasPermissions.from_string(permission),
                                      start=now - datetime.timedelta(hours=2), protocol="https,http",
                                      expiry=now + datetime.timedelta(hours=hours))


def _wait(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite-blob exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("azurite-blob did not start within 60 s")


@contextmanager
def azurite_world() -> Iterator[BlobWorld]:
    """Start Azurite's blob service on a free loopback port (data in a temporary workspace) and stop it, by its
    PID, after."""
    exe = shutil.which("azurite-blob")
    if exe is None:
        pytest.fail("azurite-blob is missing: install Node.js and `npm install -g azurite` "
                    "(scripts/install-sysdeps.sh does both)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="azurite-") as workspace:
        proc = subprocess.Popen([exe, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", workspace,
                                 "--silent", "--disableTelemetry", "--skipApiVersionCheck"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait(port, proc)
            yield BlobWorld(f"http://127.0.0.1:{port}/{ACCOUNT}")
        finally:
            end_process(proc)
