import os

import pytest

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
              "ws_proxy", "wss_proxy", "WS_PROXY", "WSS_PROXY")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Local fake servers must be reached directly, and no test may touch a real ~/.fleet-agent."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLEET_AGENT_HOME", str(tmp_path / "default-home"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny Llama with its byte-level tokenizer (fleet.hub.tiny_llama), written once per session."""
    from fleet.hub.tiny_llama import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def fake_runtimes(tmp_path, monkeypatch):
    """Fake vllm and llama-server executables first on PATH; returns the file they record their runs in."""
    import sys

    from tests.agent.fake_runtime import install_fakes

    folder = install_fakes(tmp_path / "bin", sys.executable)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    record = tmp_path / "runs.jsonl"
    monkeypatch.setenv("FAKE_RUNTIME_RECORD", str(record))
    return record
