"""The Azure head's node actions (provision/runner/azure_nodes.py) on the wire, against a local HTTP server
that plays the instance metadata endpoint and Resource Manager and checks every request: method, path,
api-version, the bearer token from the managed identity; the REST operations used are exactly the custom
role's actions."""

from __future__ import annotations

import json
import os
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
    vm = VM
    head = "demo-node0"  # this VM, as its instance metadata names it
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
        if url.path == "/metadata/instance/compute":
            if self.command != "GET" or self.headers.get("Metadata") != "true" or \
                    query != {"api-version": ["2021-02-01"]}:
                return self._refuse("IMDS compute wants GET, Metadata: true, api-version 2021-02-01")
            return self._answer(200, {"subscriptionId": "sub-1", "resourceGroupName": "rg-1", "name": self.head,
                                      "tagsList": [{"name": "mpicloud:arm", "value": f"http://{self.headers['Host']}/"}]})
        if self.headers.get("Authorization") != "Bearer tok-123":
            return self._refuse("no managed identity bearer token")
        if query != {"api-version": [COMPUTE_API]}:
            return self._refuse(f"api-version {query}")
        if not url.path.startswith(self.vm + "/"):
            return self._refuse("not the node's VM")
        operation = url.path.removeprefix(self.vm + "/")
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
    FakeAzure.vm, FakeAzure.head = VM, "demo-node0"
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


def _head_runner_json(os_name: str, shared: Path, root: Path, example: str = "") -> tuple[Any, Path]:
    """The head's runner.json as its boot writes it: Linux by cluster-files.sh (run for real) from the rendered
    runner.base.json; Windows as bootstrap.ps1 does (its $config with every node listed; PowerShell does not run
    here, so that one step is done in Python)."""
    import re
    import subprocess

    import yaml

    from mpicloud.assets import provision_dir
    from mpicloud.render import windows_bootstrap
    from mpicloud.render.azure import cloud_init
    from mpicloud.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / (example or f"azure-{os_name}-elastic.yaml"))
    target = shared / ".mpicloud" / "runner.json"
    if os_name == "linux":
        files = {f["path"]: f["content"] for f in yaml.safe_load(cloud_init.cloud_config(spec, 0))["write_files"]}
        (root / "etc" / "mpicloud").mkdir(parents=True)
        for name in ("hosts", "environment"):
            (root / "etc" / name).write_text("")
        (root / "etc" / "mpicloud" / "node.env").write_text("MPICLOUD_COUNT=5\nMPICLOUD_SLOTS=4\n"
                                                            "MPICLOUD_IDLE_MINUTES=0\n")
        (root / "opt" / "mpicloud").mkdir(parents=True)
        (root / "opt" / "mpicloud" / "runner.base.json").write_text(files["/opt/mpicloud/runner.base.json"])
        user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        done = subprocess.run(["bash", str(provision_dir() / "linux" / "cluster-files.sh"), "0", user, str(shared),
                               *(f"10.0.0.{10 + i}" for i in range(5))], env={"MPICLOUD_SYSROOT": str(root),
                                                                             "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    else:
        script = windows_bootstrap.bootstrap_ps1(spec)
        found = re.search(r"\$config = '(.*?)' \| ConvertFrom-Json", script, re.S)
        assert found
        config = json.loads(found.group(1).replace("''", "'"))
        config["nodes"] = [{"name": f"N{i}", "slots": 4} for i in range(5)]  # $NodeCount 5
        target.parent.mkdir(parents=True)
        target.write_text(json.dumps(config))
    return spec, target


@pytest.mark.parametrize("os_name", ["linux", "windows"])
def test_the_rendered_runner_json_drives_the_compact_bundles_script_on_the_wire(
        os_name: str, settings: dict[str, str], tmp_path: Path) -> None:
    """The head boots (runner.json, `azure_nodes.py configure` from the instance metadata), then the pool runs its
    resume and suspend commands as runner.json gives them: the compact bundle of that OS under /usr/bin/python3."""
    import io
    import subprocess
    import tarfile

    from mpicloud.assets import runner_bundle
    from mpicloud.render import azure
    from tests.runnerlib import NODE_PYTHON

    shared, root, install = tmp_path / "shared", tmp_path / "root", tmp_path / "install"
    spec, runner_json = _head_runner_json(os_name, shared, root)
    with tarfile.open(fileobj=io.BytesIO(runner_bundle(os_name, compact=True, cloud="azure"))) as tar:
        tar.extractall(install, filter="data")
    platform = spec.target.platform
    head, node = platform.node_name(0), platform.node_name(2)
    FakeAzure.vm, FakeAzure.head = VM.replace("demo-node2", f"demo-{node}"), f"demo-{head}"
    local = {azure.NODE_PYTHON[spec.os]: NODE_PYTHON, platform.path("azure_nodes.py"): str(install / "azure_nodes.py"),
             "/shared/.mpicloud" if os_name == "linux" else "C:\\shared\\.mpicloud": str(shared / ".mpicloud")}

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([local.get(a, a) for a in argv], capture_output=True, text=True, timeout=60,
                              check=False, env={"PATH": "/usr/bin:/bin"})

    config = json.loads(runner_json.read_text())
    config["pool"]["azure"]["imds"] = settings["imds"]  # the test's metadata endpoint instead of 169.254.169.254
    ready = config["pool"]["azure"].pop("ready_ports")  # node names do not resolve here: wait_ports is tested below
    assert ready == ([22] if os_name == "linux" else [22, 8677])
    runner_json.write_text(json.dumps(config))
    os.chown(runner_json, 65534, 65534)  # the runner's user owns it; cloud-init runs configure as root
    configure = azure.configure_command(spec, None if os_name == "linux" else settings["arm"])  # Windows: --arm
    done = run(configure)
    assert done.returncode == 0, done.stderr
    assert (runner_json.stat().st_uid, runner_json.stat().st_gid) == (65534, 65534)
    assert sorted(p.name for p in runner_json.parent.iterdir() if p.name.endswith(".tmp")) == []
    pool = json.loads(runner_json.read_text())["pool"]
    assert pool["azure"] == {"api_version": COMPUTE_API, "arm": settings["arm"], "subscription": "sub-1",
                             "resource_group": "rg-1", "cluster": "demo", "imds": settings["imds"]}
    assert (pool["max"], pool["min"]) == (4, min(spec.elastic.min, 4))  # type: ignore[union-attr]
    done = run([*pool["resume_command"], node])
    assert done.returncode == 0 and done.stdout == f"resume {node}: running\n", done.stderr
    done = run([*pool["suspend_command"], node])
    assert done.returncode == 0 and done.stdout == f"suspend {node}: deallocating\n", done.stderr
    assert FakeAzure.problems == []
    assert FakeAzure.seen == [("POST", "start"), ("GET", "instanceView"), ("GET", "instanceView"),
                              ("POST", "deallocate")]
    done = run([*pool["resume_command"]])  # no node: one clear error, no traceback
    assert done.returncode == 2 and "resume needs a node name" in done.stderr and "Traceback" not in done.stderr


def test_configure_refuses_a_vm_that_is_not_the_head(settings: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "runner.json").write_text(json.dumps({"nodes": [{"name": "node0", "slots": 0}], "pool": {
        "min": 0, "max": 0, "azure": {"imds": settings["imds"]}}}))
    FakeAzure.head = "demo-node3"
    with pytest.raises(ValueError, match="this VM is 'demo-node3', not the head node 'node0'"):
        azure_nodes.configure(tmp_path, settings["arm"])


def test_resume_waits_until_the_node_answers_on_its_ready_ports() -> None:
    """A VM that runs may still boot: resume returns once each port accepts a connection, else times out naming it."""
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now, listening only later
    opened: list[socket.socket] = []

    def listen_later() -> None:
        time.sleep(0.5)
        server = socket.create_server(("127.0.0.1", port))
        opened.append(server)

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        started = time.monotonic()
        azure_nodes.wait_ports("127.0.0.1", [port], time.monotonic() + 20, 0.05)
        assert time.monotonic() - started >= 0.4 and opened  # it waited for the listener
    finally:
        thread.join()
        for server in opened:
            server.close()
    with pytest.raises(TimeoutError, match=f"127.0.0.1 runs but its port {port} does not answer"):
        azure_nodes.wait_ports("127.0.0.1", [port], time.monotonic() + 0.3, 0.05)


def test_an_unconfigured_pool_is_one_clear_error(tmp_path: Path) -> None:
    """resume before `configure` ran (the head's boot failed there): exit 2 naming what is missing, no traceback."""
    import subprocess

    from mpicloud.assets import install_runner
    from tests.runnerlib import NODE_PYTHON

    script = install_runner(tmp_path / "opt").with_name("azure_nodes.py")
    (tmp_path / "runner.json").write_text(json.dumps({"pool": {"azure": {"api_version": COMPUTE_API}}}))
    done = subprocess.run([NODE_PYTHON, str(script), "resume", "--root", str(tmp_path), "node1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pool.azure has no arm, subscription, resource_group, cluster: the head's boot did not run" in done.stderr


def test_configure_waits_for_the_metadata_endpoint_at_boot(settings: dict[str, str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = azure_nodes.urllib.request.urlopen

    def flaky(request: Any, timeout: float) -> Any:
        calls.append(request.full_url)
        if len(calls) < 3:
            raise azure_nodes.urllib.error.URLError("connection refused")
        return real(request, timeout=timeout)

    monkeypatch.setattr(azure_nodes.urllib.request, "urlopen", flaky)
    meta = azure_nodes.instance({"imds": settings["imds"]}, wait=0.01)
    assert meta["subscriptionId"] == "sub-1" and len(calls) == 3
    calls.clear()

    def down(request: Any, timeout: float) -> Any:
        calls.append(request.full_url)
        raise azure_nodes.urllib.error.URLError("connection refused")

    monkeypatch.setattr(azure_nodes.urllib.request, "urlopen", down)
    with pytest.raises(azure_nodes.urllib.error.URLError):
        azure_nodes.instance({"imds": settings["imds"]}, tries=2, wait=0.01)
    assert len(calls) == 2  # gives up after its tries, with the error


def test_slurm_powers_a_vm_up_and_down_through_the_heads_wrappers_on_the_wire(
        settings: dict[str, str], tmp_path: Path) -> None:
    """An elastic Slurm cluster on Azure, slurmctld's view: the head's rendered /opt/mpicloud/slurm-resume with
    Slurm's hostlist runs (through sudo: a stand-in that clears the environment) the compact bundle's slurm_power.py
    under /usr/bin/python3, which runs the pool's azure_nodes.py resume for the node (start, then instanceView until
    running, with the managed identity's token); slurm-suspend deallocates it."""
    import io
    import subprocess
    import tarfile

    import yaml

    from mpicloud.assets import runner_bundle
    from mpicloud.render import azure
    from mpicloud.render.azure import cloud_init
    from tests.cloud.test_cloud_elastic_slurm import install_wrappers

    shared, root, opt = tmp_path / "shared", tmp_path / "root", tmp_path / "opt"
    spec, runner_json = _head_runner_json("linux", shared, root, "azure-linux-elastic-slurm.yaml")
    with tarfile.open(fileobj=io.BytesIO(runner_bundle("linux", compact=True))) as tar:  # what azure-runner.sh unpacks
        tar.extractall(opt, filter="data")
    config = json.loads(runner_json.read_text())
    assert config["scheduler"] == "slurm" and config["slurm_admin"] == ["sudo", "-n", "-u", "slurm"]
    config["pool"]["azure"]["imds"] = settings["imds"]
    config["pool"]["azure"].pop("ready_ports")  # node names do not resolve here (wait_ports: tested above)
    for action in ("resume", "suspend"):  # this scratch head's places
        command = config["pool"][f"{action}_command"]
        assert command == ["/usr/bin/python3", "/opt/mpicloud/azure_nodes.py", action, "--root", "/shared/.mpicloud"]
        command[1], command[4] = str(opt / "azure_nodes.py"), str(runner_json.parent)
    runner_json.write_text(json.dumps(config))
    bin_dir, ready = tmp_path / "bin", tmp_path / "ready"
    for folder in (bin_dir, ready):
        folder.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "READY_DIR": str(ready)}
    configure = [str(opt / "azure_nodes.py") if a.endswith("azure_nodes.py") else a for a in
                 azure.configure_command(spec)]
    done = subprocess.run([*configure[:-1], str(runner_json.parent)], capture_output=True, text=True, env=env,
                          timeout=60, check=False)  # the head's boot: pool.azure from its own metadata
    assert done.returncode == 0, done.stderr
    files = {f["path"]: f for f in yaml.safe_load(cloud_init.cloud_config(spec, 0))["write_files"]}
    wrappers = install_wrappers(files, bin_dir, opt, runner_json.parent)
    done = subprocess.run([str(wrappers["resume"]), "node2"], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    log = (runner_json.parent / "slurm" / "power.log").read_text()
    assert done.returncode == 0, done.stderr + log
    assert FakeAzure.state["power"] == "running" and "resume node2: done" in log
    done = subprocess.run([str(wrappers["suspend"]), "node2"], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert FakeAzure.state["power"] == "deallocated" and FakeAzure.problems == []
    assert FakeAzure.seen[0] == ("POST", "start") and FakeAzure.seen[-1] == ("POST", "deallocate")
    assert set(FakeAzure.seen[1:-1]) == {("GET", "instanceView")}
    assert (ready / "sudo.log").read_text().splitlines() == [
        f"sudo -n -u mpiadmin /usr/bin/python3 {opt}/slurm_power.py --root {runner_json.parent} {action} -- node2"
        for action in ("resume", "suspend")]
    assert not (ready / "scontrol.log").exists()  # no node was set DOWN
