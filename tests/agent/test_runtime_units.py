"""The runtime's pure parts: adapters' command lines, --runtime validation, request validation, streamed text."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from fleet.agent import runtimes
from fleet.agent.cli import main
from fleet.agent.runtimes import available_runtimes, choose_adapter
from fleet.agent.runtimes.base import RuntimeUnavailable
from fleet.agent.runtimes.builtin import BuiltinAdapter
from fleet.agent.runtimes.llamacpp import LlamaCppAdapter, pick_gguf
from fleet.agent.runtimes.process import RuntimeSettings, SettingsError
from fleet.agent.runtimes.server.requests import ApiError, parse_chat_request
from fleet.agent.runtimes.server.text import IncrementalDecoder, StopScanner
from fleet.agent.runtimes.vllm import VllmAdapter
from fleet.agent.state import Credentials, save_credentials

SNAP = Path("/models/snap")


@pytest.fixture
def empty_path(tmp_path, monkeypatch):
    """A PATH with no vllm and no llama-server, and no llama-cpp-python."""
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.setattr("fleet.agent.runtimes.llamacpp.llama_cpp_python", lambda: False)


def test_builtin_command_runs_the_server_module_with_this_python():
    assert BuiltinAdapter().command(SNAP, "acme/tiny", 8001) == [
        sys.executable, "-m", "fleet.agent.runtimes.server", "--model", "/models/snap",
        "--served-model-name", "acme/tiny", "--host", "127.0.0.1", "--port", "8001"]
    assert BuiltinAdapter().unavailable() is None  # torch and transformers are installed here


def test_vllm_and_llama_server_command_lines(fake_runtimes, tmp_path):
    bin_dir = Path(fake_runtimes).parent / "bin"
    assert VllmAdapter().command(SNAP, "acme/tiny", 8002) == [
        str(bin_dir / "vllm"), "serve", "/models/snap", "--served-model-name", "acme/tiny", "--host", "127.0.0.1",
        "--port", "8002"]
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "m.gguf").write_bytes(b"GGUF")
    assert LlamaCppAdapter().command(snapshot, "acme/tiny", 8003) == [
        str(bin_dir / "llama-server"), "-m", str(snapshot / "m.gguf"), "--alias", "acme/tiny", "--host",
        "127.0.0.1", "--port", "8003"]
    assert {"builtin", "vllm", "llamacpp"} <= set(available_runtimes())


def test_llama_cpp_python_is_the_fallback_without_llama_server(empty_path, monkeypatch, tmp_path):
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "m.gguf").write_bytes(b"GGUF")
    assert LlamaCppAdapter().unavailable().startswith("neither llama-server is on PATH")
    monkeypatch.setattr("fleet.agent.runtimes.llamacpp.llama_cpp_python", lambda: True)
    assert LlamaCppAdapter().unavailable() is None
    assert LlamaCppAdapter().command(snapshot, "acme/tiny", 8004) == [
        sys.executable, "-m", "llama_cpp.server", "--model", str(snapshot / "m.gguf"), "--model_alias", "acme/tiny",
        "--host", "127.0.0.1", "--port", "8004"]


def test_pick_gguf_prefers_the_first_shard_then_the_largest_file(tmp_path):
    for name, size in (("a-Q4.gguf", 10), ("b-Q8.gguf", 30), ("c-Q6.gguf", 20)):
        (tmp_path / name).write_bytes(b"x" * size)
    assert pick_gguf(tmp_path).name == "b-Q8.gguf"
    for name in ("big-00002-of-00002.gguf", "big-00001-of-00002.gguf"):
        (tmp_path / name).write_bytes(b"x")
    assert pick_gguf(tmp_path).name == "big-00001-of-00002.gguf"
    with pytest.raises(RuntimeUnavailable, match="no .gguf file"):
        pick_gguf(tmp_path / "nothing-here")


def test_choose_adapter_explains_what_is_missing(empty_path):
    assert choose_adapter("none") is None
    assert choose_adapter("builtin").name == "builtin"
    with pytest.raises(ValueError) as error:
        choose_adapter("vllm")
    assert str(error.value) == ("--runtime vllm: the vllm command is not on PATH: pip install vllm; or choose another "
                                "runtime (usable here: builtin), or --runtime none")
    with pytest.raises(ValueError, match="not a runtime; choose one of builtin, vllm, llamacpp, none"):
        choose_adapter("tgi")


def test_default_runtime_is_builtin_only_with_torch_and_transformers(monkeypatch):
    assert runtimes.default_runtime() == "builtin"
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert runtimes.default_runtime() == "none"
    assert BuiltinAdapter().unavailable() == ("torch and transformers not installed: install the runtime extra "
                                              "(pip install 'fleet[runtime]')")


def test_run_validates_the_runtime_flag(tmp_path, monkeypatch, capsys, caplog, empty_path):
    home = tmp_path / "home"
    save_credentials(Credentials("http://127.0.0.1:9", 1, "n1", "secret"), home)
    with pytest.raises(SystemExit) as exited:
        main(["--home", str(home), "run", "--runtime", "tgi"])
    assert exited.value.code == 2 and "argument --runtime: invalid choice: 'tgi'" in capsys.readouterr().err
    with caplog.at_level(logging.ERROR, logger="fleet.agent"):
        assert main(["--home", str(home), "run", "--runtime", "vllm"]) == 2
    assert "configuration error: --runtime vllm: the vllm command is not on PATH" in caplog.text
    monkeypatch.setenv("FLEET_RUNTIME_READY_TIMEOUT", "soon")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="fleet.agent"):
        assert main(["--home", str(home), "run", "--runtime", "none"]) == 2
    assert "FLEET_RUNTIME_READY_TIMEOUT='soon' must be a number from 0 to 86400" in caplog.text


def test_runtime_settings_from_env():
    settings = RuntimeSettings.from_env({"FLEET_RUNTIME_MAX_RESTARTS": "3", "FLEET_RUNTIME_STOP_GRACE": "2.5"})
    assert (settings.max_restarts, settings.stop_grace, settings.ready_timeout) == (3, 2.5, 900.0)
    with pytest.raises(SettingsError, match="FLEET_RUNTIME_MAX_RESTARTS='1.5' must be a whole number"):
        RuntimeSettings.from_env({"FLEET_RUNTIME_MAX_RESTARTS": "1.5"})


# ---- requests ---------------------------------------------------------------------------------------------


def parse(**body):
    return parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}, "m", 100)


def test_a_full_request_is_parsed():
    request = parse(stream=True, stream_options={"include_usage": True}, temperature=0, top_p=0.5,
                    max_completion_tokens=10, min_tokens=2, stop="\n", seed=3, frequency_penalty=0.1,
                    messages=[{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                {"type": "text", "text": "b"}]}])
    assert request.messages == [{"role": "system", "content": "ab"}]
    assert (request.stream, request.include_usage, request.temperature, request.top_p) == (True, True, 0.0, 0.5)
    assert (request.max_tokens, request.min_tokens, request.stop, request.seed) == (10, 2, ["\n"], 3)
    assert parse().max_tokens is None and parse().stop == [] and parse(stop=None).stop == []


@pytest.mark.parametrize(("body", "param", "text"), [
    ({"top_p": float("nan")}, "top_p", "must be a number"),
    ({"max_tokens": True}, "max_tokens", "whole number"),
    ({"max_tokens": 101}, "max_tokens", "from 1 to 100"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens", "must not exceed max_tokens"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options", "include_usage"),
    ({"stop": 3}, "stop", "string or a list"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "string or a list"),
    ({"messages": ["hi"]}, "messages[0]", "object"),
])
def test_bad_fields_are_named(body, param, text):
    with pytest.raises(ApiError) as error:
        parse(**body)
    assert error.value.status == 400 and error.value.param == param and text in error.value.message
    assert error.value.body()["error"]["type"] == "invalid_request_error"


def test_an_unknown_model_is_a_404():
    with pytest.raises(ApiError) as error:
        parse(model="other")
    assert error.value.status == 404 and error.value.code == "model_not_found"


# ---- streamed text ----------------------------------------------------------------------------------------


def test_stop_scanner_holds_back_only_what_could_start_a_stop_string():
    scanner = StopScanner(["END", "\n\n"])
    assert scanner.feed("abc") == "abc"
    assert scanner.feed("xE") == "x"  # "E" could begin "END"
    assert scanner.feed("\n") == "E"
    assert scanner.feed("y") == "\ny"
    assert scanner.feed("EN") == ""
    assert scanner.feed("Dxyz") == "" and scanner.stopped
    assert scanner.feed("more") == "" and scanner.flush() == ""
    assert "".join([(s := StopScanner(["END"])).feed("ab"), s.feed("cd"), s.flush()]) == "abcd"
    assert StopScanner([]).feed("x") == "x"


def test_incremental_decoder_waits_for_whole_characters(tiny_model):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    ids = tokenizer.encode("h\u00e9\u2603 ok").ids
    assert len(ids) == 9  # one token per byte: é is 2 bytes, ☃ is 3
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.add(token) for token in ids]
    assert "".join(pieces) == "h\u00e9\u2603 ok" and "\ufffd" not in "".join(pieces)
    assert pieces[:6] == ["h", "", "\u00e9", "", "", "\u2603"]


def test_the_agent_never_imports_torch_or_transformers():
    import subprocess

    code = ("import sys, fleet.agent.cli, fleet.agent.chat, fleet.agent.runtimes.supervisor, "
            "fleet.agent.runtimes.server.app, fleet.agent.runtimes.server.__main__\n"
            "from fleet.agent.runtimes import available_runtimes; available_runtimes()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_the_coalescer_joins_deltas_within_its_interval_and_keeps_their_order():
    from fleet.agent.chat import Coalescer

    frames: list[str] = []

    async def send(text: str) -> None:
        frames.append(text)

    coalescer = Coalescer(send, lambda: 3600.0)
    for part in ("a", "b", "c", "d"):
        await coalescer.add(part)
    assert frames == ["a"]  # the first goes at once; the rest wait for the interval
    await coalescer.close()
    assert frames == ["a", "bcd"]
    eager = Coalescer(send, lambda: 0.0)
    await eager.add("x")
    await eager.add("y")
    assert frames[-2:] == ["x", "y"]
