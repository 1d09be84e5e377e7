import pytest

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
              "ws_proxy", "wss_proxy", "WS_PROXY", "WSS_PROXY")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Local fake servers must be reached directly, and no test may touch a real ~/.fleet-agent."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLEET_AGENT_HOME", str(tmp_path / "default-home"))
