"""The shared OpenAI chat-completions body parser (runtime and gateway both use it)."""

import subprocess
import sys

import pytest

from fleet.lib.openai_chat import ChatCompletionRequest, ChatRequestError, parse_chat_completion

HI = [{"role": "user", "content": "hi"}]


def parse(**fields) -> ChatCompletionRequest:
    return parse_chat_completion({"model": "m", "messages": HI, **fields}, max_tokens_limit=100)


def refusal(body, **options) -> ChatRequestError:
    with pytest.raises(ChatRequestError) as error:
        parse_chat_completion(body, **options)
    return error.value


def test_a_full_body_is_parsed_with_openai_names():
    chat = parse(stream=True, stream_options={"include_usage": True}, temperature=1, top_p=0.5, max_tokens=9,
                 stop=["a", "b"], seed=-3, n=1, user="ignored", frequency_penalty=0.2,
                 messages=[{"role": "developer", "content": [{"type": "text", "text": "be "},
                                                             {"type": "text", "text": "brief"}]},
                           {"role": "user", "content": "hi", "name": "bob"},
                           {"role": "assistant", "content": ""}])
    assert chat.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": ""}]
    assert (chat.stream, chat.include_usage, chat.temperature, chat.top_p) == (True, True, 1.0, 0.5)
    assert isinstance(chat.temperature, float)
    assert (chat.max_tokens, chat.max_tokens_param, chat.stop, chat.seed) == (9, "max_tokens", ["a", "b"], -3)


def test_absent_and_null_fields_mean_the_defaults():
    for chat in (parse(), parse(stream=None, stream_options=None, temperature=None, top_p=None, max_tokens=None,
                                stop=None, seed=None, n=None)):
        assert chat == ChatCompletionRequest(model="m", messages=HI)


def test_max_completion_tokens_wins_and_is_named():
    chat = parse(max_completion_tokens=5, max_tokens=50)
    assert (chat.max_tokens, chat.max_tokens_param) == (5, "max_completion_tokens")
    assert parse(max_completion_tokens=None, max_tokens=7).max_tokens == 7
    assert parse(stop="\n").stop == ["\n"]
    unbounded = parse_chat_completion({"model": "m", "messages": HI, "max_tokens": 10**6})
    assert unbounded.max_tokens == 10**6


@pytest.mark.parametrize(("fields", "param", "text"), [
    ({"model": ""}, "model", "required: a model id from GET /v1/models"),
    ({"model": 7}, "model", "1 to 200 characters"),
    ({"model": "x" * 201}, "model", "required"),
    ({"n": 2}, "n", "only n=1"),
    ({"n": True}, "n", "only n=1"),
    ({"stream": "yes"}, "stream", "true or false"),
    ({"stream_options": "yes"}, "stream_options", "include_usage"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options", "include_usage"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": "hi"}, "messages", "non-empty list"),
    ({"messages": ["hi"]}, "messages[0]", "an object with role and content"),
    ({"messages": [HI[0], {"role": "tool", "content": "x"}]}, "messages[1].role", "'tool'"),
    ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role", "must be one of"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "string or a list of text parts"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]",
     "only text parts"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages[0].content[0]",
     "only text parts"),
    ({"temperature": -0.1}, "temperature", "at least 0 and at most 2"),
    ({"temperature": 2.5}, "temperature", "at most 2"),
    ({"temperature": "hot"}, "temperature", "must be a number"),
    ({"temperature": True}, "temperature", "must be a number"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"top_p": float("nan")}, "top_p", "must be a number"),
    ({"top_p": float("inf")}, "top_p", "must be a number"),
    ({"max_tokens": 0}, "max_tokens", "from 1 to 100"),
    ({"max_tokens": 101}, "max_tokens", "from 1 to 100, got 101"),
    ({"max_tokens": 1.5}, "max_tokens", "whole number"),
    ({"max_completion_tokens": 0, "max_tokens": 5}, "max_completion_tokens", "from 1 to 100"),
    ({"stop": 3}, "stop", "string or a list"),
    ({"stop": ""}, "stop", "non-empty string"),
    ({"stop": ["a", ""]}, "stop", "non-empty strings"),
    ({"stop": list("abcde")}, "stop", "at most 4 stop sequences, got 5"),
    ({"seed": 1.5}, "seed", "whole number"),
    ({"seed": 2**64}, "seed", "must be from"),
])
def test_bad_fields_are_400s_naming_the_field(fields, param, text):
    error = refusal({"model": "m", "messages": HI, **fields}, max_tokens_limit=100)
    assert (error.status, error.param, error.code) == (400, param, "invalid_value")
    assert error.message.startswith(f"{param}: ") and text in error.message, error.message


def test_the_first_bad_field_is_named_and_the_model_help_is_the_callers():
    error = refusal({"messages": []}, model_help="the served model name ('a/b')")
    assert error.message == "model: required: the served model name ('a/b') (1 to 200 characters)"
    assert refusal({"model": "m", "messages": [], "temperature": 9}).param == "messages"


@pytest.mark.parametrize("body", [None, [], [1, 2], "text", 3])
def test_a_body_that_is_not_an_object_is_refused_without_a_param(body):
    error = refusal(body)
    assert (error.status, error.param, error.message) == (400, None, "body: must be a JSON object")


def test_the_parser_imports_neither_django_nor_torch():
    code = ("import sys, fleet.lib.openai_chat; "
            "print(sorted(m for m in ('django', 'torch', 'pydantic') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
