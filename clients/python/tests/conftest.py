"""A real ``postmesh dev`` for the whole session, and signed-up users.

The binary is ``POSTMESH_BIN``, else ``target/debug/postmesh`` of the
repository (built with ``cargo build -p postmesh`` when missing). It runs on
free ports with a scratch data directory and none of the caller's
``POSTMESH_*`` settings.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import postmesh
from helpers import PASSWORD, Server, User, unique_email

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
READY_SECONDS = 120


def postmesh_binary() -> Path:
    binary = Path(os.environ.get("POSTMESH_BIN", REPO / "target" / "debug" / "postmesh"))
    if not binary.exists():
        subprocess.run(["cargo", "build", "-p", "postmesh"], cwd=REPO, check=True)
    return binary


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = postmesh_binary()
    scratch = tmp_path_factory.mktemp("postmesh-dev")
    env = {name: value for name, value in os.environ.items() if not name.startswith("POSTMESH_")}
    env["POSTMESH_LOG"] = "warn"
    stderr_path = scratch / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [str(binary), "dev", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
             "--data-dir", str(scratch / "data")],
            cwd=scratch,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    ready: queue.Queue[str] = queue.Queue()

    def read_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("postmesh ready"):
                ready.put(line)
        ready.put("")  # the process ended

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        line = ready.get(timeout=READY_SECONDS)
    except queue.Empty:
        line = ""
    if not line:
        process.kill()
        process.wait()
        pytest.fail(f"postmesh dev did not become ready; stderr:\n{stderr_path.read_text()}")
    fields = dict(part.split("=", 1) for part in line.split()[2:] if "=" in part)
    try:
        yield Server(target=fields["grpc"], http=fields["http"])
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def user(server: Server) -> User:
    email = unique_email()
    with postmesh.Client(server.target) as client:
        answer = client.register(email, PASSWORD, display_name="SDK test")
    return User(email=email, password=PASSWORD, token=answer.tokens.access_token)


@pytest.fixture
def client(server: Server, user: User) -> Iterator[postmesh.Client]:
    with postmesh.Client(server.target, token=user.token) as client:
        yield client


@pytest.fixture(scope="session")
def quickstart() -> ModuleType:
    """``examples/quickstart.py`` as a module."""
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLES / "quickstart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
