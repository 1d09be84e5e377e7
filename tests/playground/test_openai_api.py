"""The gateway's policy on top of the shared OpenAI body parser: protocol bounds, message limits, 413."""

import json

import pytest

from fleet.playground.openai_api import MAX_MESSAGES, GatewayError, parse_chat_request

HI = [{"role": "user", "content": "hi"}]


def refusal(**fields) -> GatewayError:
    with pytest.raises(GatewayError) as error:
        parse_chat_request(json.dumps({"model": "m", "messages": HI, **fields}).encode())
    return error.value


def test_a_valid_body_becomes_protocol_params():
    chat = parse_chat_request(json.dumps({"model": "m", "messages": [{"role": "developer", "content": "x"}],
                                          "max_completion_tokens": 9, "temperature": 1, "seed": 4,
                                          "stream": True}).encode())
    assert chat.messages == [{"role": "system", "content": "x"}] and chat.stream and not chat.include_usage
    assert chat.params == {"temperature": 1.0, "max_tokens": 9, "stop": [], "seed": 4}


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_completion_tokens": 40000}, "max_completion_tokens"),  # over ChatParams' 32768
    ({"max_tokens": 40000}, "max_tokens"),
    ({"seed": -1}, "seed"),  # OpenAI allows it; the protocol does not
    ({"stop": ["x" * 257]}, "stop"),
    ({"messages": HI * (MAX_MESSAGES + 1)}, "messages"),
    ({"messages": [{"role": "user", "content": "x" * 200_001}]}, "messages[0].content"),
    ({"tools": [{"type": "function"}], "messages": [{"role": "tool", "content": "x"}]}, "tools"),
    ({"temperature": 3}, "temperature"),  # the shared parser's error, mapped
])
def test_gateway_limits_name_the_field(fields, param):
    error = refusal(**fields)
    assert (error.status, error.param, error.type) == (400, param, "invalid_request_error")
    assert error.message.startswith(f"{param}: ")


def test_bodies_that_are_not_json_objects():
    with pytest.raises(GatewayError) as error:
        parse_chat_request(b"[1]")
    assert (error.value.status, error.value.code, error.value.param) == (400, "invalid_json", None)
    with pytest.raises(GatewayError) as error:
        parse_chat_request(b"{")
    assert error.value.message == "body: not valid JSON"
    with pytest.raises(GatewayError) as error:
        parse_chat_request(b" " * (8 * 1024 * 1024 + 1))
    assert (error.value.status, error.value.code) == (413, "body_too_large")
