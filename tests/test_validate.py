"""The request validator alone: every shape an engine refuses or fails on is a 400 naming the
field; valid bodies and unknown fields pass."""
import json

import pytest

from llamarig.api.compute.validate import Invalid, ModelLimits, check

SERVER = ModelLimits(context=256, vocab=260, embeddings=False)
PYTHON = ModelLimits(context=256, vocab=260, embeddings=False, one_text_prompt=True)
CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
HI = [{"role": "user", "content": "hi"}]


def refused(path: str, body: dict | str, limits=SERVER) -> str:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    with pytest.raises(Invalid) as e:
        check(path, json.loads(raw), raw, limits)
    assert e.value.message
    return e.value.param


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "system", "content": [{"type": "text", "text": "x"}]}]},
     "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": "m", "messages": HI, "max_tokens": -1}, "max_tokens"),
    ({"model": "m", "messages": HI, "max_tokens": 10**12}, "max_tokens"),
    ({"model": "m", "messages": HI, "max_tokens": "8"}, "max_tokens"),
    ({"model": "m", "messages": HI, "max_tokens": True}, "max_tokens"),
    ({"model": "m", "messages": HI, "temperature": 9}, "temperature"),
    ({"model": "m", "messages": HI, "stream": "yes"}, "stream"),
    ({"model": "m", "messages": HI, "stream": None}, "stream"),
    ({"model": "m", "messages": HI, "presence_penalty": None}, "presence_penalty"),
    ({"model": "m", "messages": HI, "frequency_penalty": None}, "frequency_penalty"),
    ({"model": "m", "messages": HI, "n": 3}, "n"),
    ({"model": "m", "messages": HI, "stop": [1, 2]}, "stop"),
    ({"model": "m", "messages": HI, "logit_bias": {"999999": 1}}, "logit_bias.999999"),
    ({"model": "m", "messages": HI, "seed": 2**40}, "seed"),
])
def test_chat_refusals_name_the_field(body, param):
    assert refused(CHAT, body) == param


def test_a_lone_surrogate_is_refused_with_its_path():
    assert refused(CHAT, '{"model": "m", "messages": [{"role": "user", "content": "a\\udcffb"}]}') == \
        "messages[0].content"
    # A proper pair is a character, not an error.
    raw = '{"model": "m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'.encode()
    check(CHAT, json.loads(raw), raw, SERVER)


@pytest.mark.parametrize("body, param, limits", [
    ({"model": "m", "prompt": 5}, "prompt", SERVER),
    ({"model": "m", "prompt": ""}, "prompt", SERVER),
    ({"model": "m", "prompt": [1, "a"]}, "prompt[1]", SERVER),
    ({"model": "m", "prompt": [1, 300]}, "prompt[1]", SERVER),
    ({"model": "m", "prompt": [[1], []]}, "prompt[1]", SERVER),
    ({"model": "m", "prompt": [1, 2]}, "prompt", PYTHON),
    ({"model": "m", "prompt": ["a", "b"]}, "prompt", PYTHON),
    ({"model": "m", "prompt": "x", "echo": 1}, "echo", SERVER),
    ({"model": "m", "prompt": "x", "logprobs": -1}, "logprobs", SERVER),
])
def test_completion_refusals(body, param, limits):
    assert refused(COMPLETIONS, body, limits) == param


def test_embedding_refusals():
    assert refused(EMBEDDINGS, {"model": "e"}) == "input"
    assert refused(EMBEDDINGS, {"model": "e", "input": []}) == "input"
    assert refused(EMBEDDINGS, {"model": "e", "input": ["a", ""]}) == "input[1]"
    assert refused(EMBEDDINGS, {"model": "e", "input": "a", "encoding_format": "hex"}) == "encoding_format"
    assert refused(EMBEDDINGS, {"model": "e", "input": "a", "encoding_format": None}) == "encoding_format"


def test_valid_bodies_pass_with_unknown_fields():
    for path, body in [
        (CHAT, {"model": "m", "messages": HI, "max_tokens": 8, "stream": True, "ignore_eos": True,
                "top_k": 3, "stop": ["\n"], "temperature": 0, "seed": -1, "max_completion_tokens": None}),
        (CHAT, {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                                           {"role": "tool", "content": "r", "tool_call_id": "1"}]}),
        (COMPLETIONS, {"model": "m", "prompt": [[1, 2], [3]], "max_tokens": 256, "x-vendor": {"a": 1}}),
        (EMBEDDINGS, {"model": "e", "input": ["a", "b"], "encoding_format": "float"}),
    ]:
        raw = json.dumps(body).encode()
        check(path, json.loads(raw), raw, SERVER)
