"""The Azure head's node actions (provision/runner/azure_nodes.py) on the wire, against a local HTTP server
that plays the instance metadata endpoint and Resource Manager and checks every request: method, path,
api-version, the bearer token from the managed identity; the REST operations used are exactly the custom
role's actions."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mpicloud.render.azure import COMPUTE_API, ELASTIC_ACTIONS
from tests.runnerlib import node_module

azure_nodes = node_module("azure_nodes")
VM = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Compute/virtualMachines/demo-node2"
#: Resource Manager operation -> the RBAC action it needs
ACTION_OF = {("POST", "start"): "Microsoft.Compute/virtualMachines/start/action",
             ("POST", "deallocate"): "Microsoft.Compute/virtualMachines/deallocate/action",
             ("GET", "instanceView"): "Microsoft.Compute/virtualMachines/read"}


class FakeAzure(BaseHTTPRequestHandler):
    """IMDS + Resource Manager for one VM; refuses (400) whatever a real endpoint would not take."""

    state = {"power": "deallocated", "views": 0}
    seen: list[tuple[str, str]] = []
    problems: list[str] = []

    def _answer(self, code: int, body: Any = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, why: str) -> None:
        self.problems.append(f"{self.command} {self.path}: {why}")
        self._answer(400, {"error": why})

    def _route(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/metadata/identity/oauth2/token":
            if self.command != "GET" or self.headers.get("Metadata") != "true":
                return self._refuse("IMDS wants GET with Metadata: true")
            if query != {"api-version": ["2018-02-01"], "resource": [f"http://{self.headers['Host']}/"]}:
                return self._refuse(f"token query {query}")
            return self._answer(200, {"access_token": "tok-123", "token_type": "Bearer"})
        if self.headers.get("Authorization") != "Bearer tok-123":
            return self._refuse("no managed identity bearer token")
        if query != {"api-version": [COMPUTE_API]}:
            return self._refuse(f"api-version {query}")
        if not url.path.startswith(VM + "/"):
            return self._refuse("not the node's VM")
        operation = url.path.removeprefix(VM + "/")
        if (self.command, operation) not in ACTION_OF:
            return self._refuse("unknown operation")
        self.seen.append((self.command, operation))
        if operation == "instanceView":
            self.state["views"] += 1
            if self.state["power"] == "starting" and self.state["views"] > 1:
                self.state["power"] = "running"
            return self._answer(200, {"statuses": [{"code": "ProvisioningState/succeeded"},
                                                   {"code": f"PowerState/{self.state['power']}"}]})
        self.state["power"] = "starting" if operation == "start" else "deallocated"
        self.state["views"] = 0
        return self._answer(202)

    do_GET = do_POST = _route

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def settings() -> Iterator[dict[str, str]]:
    FakeAzure.state = {"power": "deallocated", "views": 0}
    FakeAzure.seen, FakeAzure.problems = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAzure)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield {"arm": f"{base}/", "imds": f"{base}/metadata", "subscription": "sub-1", "resource_group": "rg-1",
               "cluster": "demo"}
    finally:
        server.shutdown()
        server.server_close()


def test_resume_starts_and_waits_for_running_suspend_deallocates(settings: dict[str, str]) -> None:
    assert azure_nodes.resume(settings, "node2", poll=0.01) == "running"
    assert FakeAzure.state["power"] == "running"
    assert azure_nodes.suspend(settings, "node2") == "deallocating"
    assert FakeAzure.state["power"] == "deallocated"
    assert FakeAzure.problems == []
    assert FakeAzure.seen == [("POST", "start"), ("GET", "instanceView"), ("GET", "instanceView"),
                              ("POST", "deallocate")]
    assert {ACTION_OF[op] for op in FakeAzure.seen} == set(ELASTIC_ACTIONS)  # the custom role, exactly


def test_a_wrong_token_or_version_is_an_error_not_a_silent_success(settings: dict[str, str]) -> None:
    import urllib.error

    bearer = azure_nodes.token(settings)
    with pytest.raises(urllib.error.HTTPError):
        azure_nodes.call(settings, bearer + "x", "POST", azure_nodes.vm_url(settings, "node2", "start"))
    with pytest.raises(urllib.error.HTTPError):
        azure_nodes.call(settings, bearer, "POST", azure_nodes.vm_url(settings, "node9", "start"))
    assert FakeAzure.state["power"] == "deallocated"


def test_it_runs_on_the_nodes_python_with_the_standard_library_only(tmp_path: Path) -> None:
    """Installed beside the runner and its protocol package (as a node has them), under the nodes' Python."""
    import shutil
    import subprocess

    from mpicloud.assets import install_runner
    from tests.runnerlib import NODE_PYTHON, RUNNER

    install_runner(tmp_path)
    shutil.copy(RUNNER.with_name("azure_nodes.py"), tmp_path)
    probe = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import azure_nodes; print(azure_nodes.COMPUTE_API)"
    done = subprocess.run([NODE_PYTHON, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == COMPUTE_API
