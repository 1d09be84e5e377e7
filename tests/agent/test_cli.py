"""fleet-agent enroll / status / rotate against a tiny local HTTP server."""

from __future__ import annotations

import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.agent.cli import main
from fleet.agent.state import Credentials, load_credentials, save_credentials, write_status


class FakeServer:
    def __init__(self):
        self.requests: list[tuple[str, dict, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, dict(self.headers), body))
                status, answer = fake.answer(self.path, self.headers, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, path, headers, body):
        if path == "/api/agents/enroll":
            if body["token"] == "good":
                name = body["name"] or body["hostname"].split(".")[0]
                return 201, {"node_id": 42, "node_name": name, "secret": "s3cret-node-42"}
            if body["token"] == "used":
                return 410, {"error": "enrollment token already used", "field": "token"}
            return 403, {"error": "enrollment token unknown or expired", "field": "token"}
        if path == "/api/agents/rotate":
            if headers.get("Authorization") == "Bearer s3cret-node-42":
                return 200, {"secret": "rotated-secret"}
            return 403, {"error": "credential refused", "field": "secret"}
        return 404, {"error": "not found"}


@pytest.fixture
def server():
    fake = FakeServer()
    thread = threading.Thread(target=fake.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "agent-home"
    monkeypatch.setenv("FLEET_AGENT_HOME", str(path))
    return path


def test_enroll_saves_private_credentials(server, home, capsys):
    rc = main(["enroll", "--server", server.url + "/", "--token", "good", "--name", "gpu-07",
               "--kind", "gpu_server", "--label", "rack=a1", "--label", "zone=eu-1"])
    out = capsys.readouterr().out
    assert rc == 0
    path = home / "credentials.json"
    assert out.strip() == f"enrolled as node gpu-07 (id 42); credentials saved to {path}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    saved = json.loads(path.read_text())
    assert saved == {"server": server.url, "node_id": 42, "node_name": "gpu-07", "secret": "s3cret-node-42"}
    (req_path, headers, body) = server.requests[0]
    assert req_path == "/api/agents/enroll"
    assert headers["Content-Type"] == "application/json"
    assert body["token"] == "good" and body["name"] == "gpu-07" and body["kind"] == "gpu_server"
    assert body["labels"] == {"rack": "a1", "zone": "eu-1"}
    assert body["hostname"]
    assert not list(home.glob(".*tmp"))


def test_enroll_without_name_lets_the_server_name_the_node(server, home, monkeypatch):
    import socket

    from fleet.agent import cli
    from fleet.agent.collectors import HostOnlyCollector, Selection

    # No --kind: the host's collectors type it (here: no accelerator, so a CPU node).
    monkeypatch.setattr(cli, "select_collector", lambda: Selection(HostOnlyCollector("none"), "none"))
    assert main(["enroll", "--server", server.url, "--token", "good"]) == 0
    body = server.requests[0][2]
    assert body["name"] is None and body["hostname"] == socket.gethostname()
    assert body["kind"] == "cpu_node" and body["labels"] == {}


@pytest.mark.parametrize(("token", "message"), [("expired", "enrollment token unknown or expired"),
                                                ("used", "enrollment token already used")])
def test_enroll_error_printed_plainly(server, home, capsys, token, message):
    rc = main(["enroll", "--server", server.url, "--token", token])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.strip() == f"enrollment failed: {message}"
    assert "Traceback" not in captured.err + captured.out
    assert not (home / "credentials.json").exists()


def test_enroll_unreachable_server(home, capsys):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["enroll", "--server", f"http://127.0.0.1:{port}", "--token", "t"]) == 1
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("label", ["novalue", "Bad=x", "-x=y", "k=" + "v" * 64, "=v"])
def test_bad_label_rejected(home, capsys, label):
    with pytest.raises(SystemExit) as info:
        main(["enroll", "--server", "http://x", "--token", "t", "--label", label])
    assert info.value.code == 2
    assert "--label" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["ftp://fleet", "fleet.example", "http://", "https://h:99999"])
def test_bad_server_rejected(home, capsys, url):
    with pytest.raises(SystemExit) as info:
        main(["enroll", "--server", url, "--token", "t"])
    assert info.value.code == 2
    assert "--server" in capsys.readouterr().err


def test_bad_kind_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["enroll", "--server", "http://x", "--token", "t", "--kind", "toaster"])
    assert "--kind" in capsys.readouterr().err


def test_status_not_enrolled(home, capsys):
    assert main(["status"]) == 1
    assert "not enrolled: run fleet-agent enroll --server URL --token T" in capsys.readouterr().err


def test_status_enrolled_agent_not_running(home, capsys):
    save_credentials(Credentials("http://fleet:8000", 5, "edge-5", "TOPSECRET"), home)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "http://fleet:8000" in out and "edge-5 (id 5)" in out
    assert "agent not running" in out
    assert "TOPSECRET" not in out

    # a status.json whose pid is dead still says "not running", but shows the last error
    write_status(home, connected=True, server="http://fleet:8000", last_error="boom")
    data = json.loads((home / "status.json").read_text())
    data["pid"] = 2**22 + 12345
    (home / "status.json").write_text(json.dumps(data))
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "agent not running" in out and "boom" in out


def test_status_running_agent(home, capsys):
    save_credentials(Credentials("http://fleet:8000", 5, "edge-5", "TOPSECRET"), home)
    serving = [{"runtime": "builtin", "repo": "acme/tiny", "sha": "a" * 40, "state": "ready", "port": 8123},
               {"runtime": "builtin", "repo": "acme/bad", "sha": "b" * 40, "state": "failed", "reason": "exited"}]
    write_status(home, connected=True, since="2025-01-01T00:00:00+00:00", last_error=None,  # our own pid
                 serving=serving)
    assert main(["--home", str(home), "status"]) == 0
    out = capsys.readouterr().out
    assert "connected:  yes" in out and "2025-01-01T00:00:00+00:00" in out
    assert "runtime:    builtin acme/tiny@aaaaaaaaaaaa ready on 127.0.0.1:8123\n" in out
    assert "runtime:    builtin acme/bad@bbbbbbbbbbbb failed (exited)\n" in out


def test_home_flag_overrides_env(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLEET_AGENT_HOME", str(tmp_path / "env-home"))
    other = tmp_path / "flag-home"
    save_credentials(Credentials("http://a", 1, "n", "s"), other)
    assert main(["status", "--home", str(other)]) == 0
    assert main(["status"]) == 1


def test_rotate(server, home, capsys):
    save_credentials(Credentials(server.url, 42, "gpu-07", "s3cret-node-42"), home)
    assert main(["rotate"]) == 0
    assert load_credentials(home).secret == "rotated-secret"
    assert stat.S_IMODE(os.stat(home / "credentials.json").st_mode) == 0o600
    assert server.requests[-1][1]["Authorization"] == "Bearer s3cret-node-42"
    # the old secret is now refused: plain error, credentials untouched
    save_credentials(Credentials(server.url, 42, "gpu-07", "old"), home)
    assert main(["rotate"]) == 1
    assert "rotation failed: credential refused" in capsys.readouterr().err
    assert load_credentials(home).secret == "old"


def test_run_not_enrolled(home):
    assert main(["run", "--simulate", "cpu-only"]) == 1
