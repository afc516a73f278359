"""The OpenAI request shapes the compute API routes (chat, completions, embeddings), checked
before a model is leased: the fields the engines need, their types and ranges, and text that is
valid UTF-8. A request an engine would refuse, or fail on, is answered 400 here in one shape
for both engines, naming the field as `param`. Fields not listed pass through unchecked
(clients send vendor extensions), and a valid body is forwarded as it came.

Plain functions over the parsed JSON, not pydantic: this runs on every request (bench/RESULTS.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


class Invalid(Exception):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass(frozen=True)
class ModelLimits:
    context: int            # tokens; max_tokens may not pass it
    vocab: int | None       # token ids must be below it; None: unknown (file not read yet)
    embeddings: bool        # serves /v1/embeddings only
    one_text_prompt: bool = False  # its engine (llama-cpp-python) takes one text prompt: no token ids, no batch


Check = Callable[[object, str, ModelLimits], None]
# The roles both engines take (llama-cpp-python has no "developer"; its "function" needs a name).
ROLES = ("system", "user", "assistant", "tool")
# null is refused where an engine takes none: llama-cpp-python's defaults are not Optional, and
# its server hands a null penalty on to a C call that fails with a 500 (test_fuzz found it).
NOT_NULL = {"stream", "temperature", "top_p", "echo", "encoding_format", "presence_penalty", "frequency_penalty"}
UINT32 = 2**32 - 1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(lo: float, hi: float) -> Check:
    def check(v, param, limits):
        if not _is_num(v) or not lo <= v <= hi:
            raise Invalid(param, f"{param} must be a number from {lo:g} to {hi:g}")
    return check


def integer(lo: int, hi: int) -> Check:
    def check(v, param, limits):
        if not _is_int(v) or not lo <= v <= hi:
            raise Invalid(param, f"{param} must be a whole number from {lo} to {hi}")
    return check


def of_type(kind: type, name: str) -> Check:
    def check(v, param, limits):
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise Invalid(param, f"{param} must be {name}")
    return check


def one_of(*values: str) -> Check:
    def check(v, param, limits):
        if v not in values:
            raise Invalid(param, f"{param} must be one of {', '.join(map(repr, values))}")
    return check


def max_tokens(v, param, limits: ModelLimits) -> None:
    if not _is_int(v) or not 1 <= v <= limits.context:
        raise Invalid(param, f"{param} must be a whole number from 1 to the model's context size ({limits.context})")


def stop(v, param, limits) -> None:
    if isinstance(v, str):
        return
    if not isinstance(v, list) or len(v) > 16 or not all(isinstance(s, str) for s in v):
        raise Invalid(param, f"{param} must be a string or a list of at most 16 strings")


def logit_bias(v, param, limits: ModelLimits) -> None:
    if not isinstance(v, dict):
        raise Invalid(param, f"{param} must be an object of token id to bias")
    for token, bias in v.items():
        if not token.isdigit() or (limits.vocab is not None and int(token) >= limits.vocab):
            raise Invalid(f"{param}.{token}", f"{param} keys must be token ids{_below(limits)}")
        if not _is_num(bias) or not -100 <= bias <= 100:
            raise Invalid(f"{param}.{token}", f"{param} values must be numbers from -100 to 100")


def _below(limits: ModelLimits) -> str:
    return f" from 0 to {limits.vocab - 1}" if limits.vocab else " (whole numbers from 0)"


def _tokens(v: list, param: str, limits: ModelLimits) -> None:
    for i, t in enumerate(v):
        if not _is_int(t) or t < 0 or (limits.vocab is not None and t >= limits.vocab):
            raise Invalid(f"{param}[{i}]", f"token ids must be whole numbers{_below(limits)}")


def text_or_tokens(v, param: str, limits: ModelLimits) -> None:
    """A string, a list of strings, a list of token ids, or a list of such lists; nothing empty."""
    message = f"{param} must be a non-empty string, list of strings, list of token ids or list of such lists"
    if isinstance(v, str):
        if not v:
            raise Invalid(param, message)
        return
    if not isinstance(v, list) or not v:
        raise Invalid(param, message)
    if all(isinstance(s, str) for s in v):
        for i, s in enumerate(v):
            if not s:
                raise Invalid(f"{param}[{i}]", message)
    elif all(isinstance(s, list) for s in v):
        for i, s in enumerate(v):
            if not s:
                raise Invalid(f"{param}[{i}]", message)
            _tokens(s, f"{param}[{i}]", limits)
    else:
        _tokens(v, param, limits)
    if limits.one_text_prompt and (len(v) > 1 or not isinstance(v[0], str)):
        raise Invalid(param, f"{param} must be one text: this model's engine (llama-cpp-python) takes no token ids "
                      "and no batch of prompts")


def _content(v, param: str, m: dict) -> None:
    if isinstance(v, str) or (v is None and m["role"] == "assistant" and m.get("tool_calls")):
        return
    if not isinstance(v, list) or not v or m["role"] != "user":
        raise Invalid(param, f"{param} must be a string" + (" or a non-empty list of text parts"
                                                            if m["role"] == "user" else ""))
    for i, part in enumerate(v):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise Invalid(f"{param}[{i}]", "content parts must be {\"type\": \"text\", \"text\": \"...\"}: "
                          "the models of this rig take text only")


def messages(v, param: str, limits) -> None:
    if not isinstance(v, list) or not v:
        raise Invalid(param, f"{param} must be a non-empty list of messages")
    for i, m in enumerate(v):
        where = f"{param}[{i}]"
        if not isinstance(m, dict):
            raise Invalid(where, "each message must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise Invalid(f"{where}.role", f"role must be one of {', '.join(ROLES)}")
        _content(m.get("content"), f"{where}.content", m)
        if "name" in m and not isinstance(m["name"], str):
            raise Invalid(f"{where}.name", "name must be a string")
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise Invalid(f"{where}.tool_call_id", "a tool message needs its tool_call_id (a string)")


def tools(v, param: str, limits) -> None:
    if not isinstance(v, list):
        raise Invalid(param, f"{param} must be a list of tools")
    for i, t in enumerate(v):
        fn = t.get("function") if isinstance(t, dict) else None
        if t.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Invalid(f"{param}[{i}]", "each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}")


def response_format(v, param: str, limits) -> None:
    if not isinstance(v, dict) or v.get("type") not in ("text", "json_object", "json_schema"):
        raise Invalid(param, f"{param} must be an object whose type is 'text', 'json_object' or 'json_schema'")
    if v["type"] == "json_schema" and not isinstance(v.get("json_schema"), dict):
        raise Invalid(f"{param}.json_schema", "a json_schema response format needs a json_schema object")


def stream_options(v, param: str, limits) -> None:
    if not isinstance(v, dict) or not isinstance(v.get("include_usage", False), bool):
        raise Invalid(param, f"{param} must be an object; include_usage a boolean")


SAMPLING: dict[str, Check] = {
    "stream": of_type(bool, "true or false"), "stream_options": stream_options,
    "temperature": number(0, 2), "top_p": number(0, 1), "n": integer(1, 1),
    "presence_penalty": number(-2, 2), "frequency_penalty": number(-2, 2), "seed": integer(-1, UINT32),
    "stop": stop, "logit_bias": logit_bias, "user": of_type(str, "a string"), "max_tokens": max_tokens,
}
ROUTES: dict[str, tuple[str, dict[str, Check]]] = {
    "/v1/chat/completions": ("messages", {
        **SAMPLING, "messages": messages, "max_completion_tokens": max_tokens,
        "logprobs": of_type(bool, "true or false"), "top_logprobs": integer(0, 20), "tools": tools,
        "tool_choice": of_type((str, dict), "a string or an object"), "response_format": response_format}),
    "/v1/completions": ("prompt", {
        **SAMPLING, "prompt": text_or_tokens, "echo": of_type(bool, "true or false"), "best_of": integer(1, 1),
        "logprobs": integer(0, 5), "suffix": of_type(str, "a string")}),
    "/v1/embeddings": ("input", {
        "input": text_or_tokens, "encoding_format": one_of("float", "base64"),
        "dimensions": integer(1, 65536), "user": of_type(str, "a string")}),
}


def check(path: str, data: dict, raw: bytes, limits: ModelLimits) -> None:
    """Raise Invalid for the first field an engine would refuse; `raw` is the body as sent."""
    required, checks = ROUTES[path]
    if required not in data:
        raise Invalid(required, f"{required} is required")
    for name, value in data.items():
        fn = checks.get(name)
        if fn is not None and (value is not None or name == required or name in NOT_NULL):
            fn(value, name, limits)
    # A lone surrogate can only come from a \u escape: look for one only when the body has them.
    if b"\\ud" in raw or b"\\uD" in raw:
        _utf8(data, "")


def _utf8(value, param: str) -> None:
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise Invalid(param or "(body)", f"{param or 'the body'} holds a lone surrogate escape: not "
                          "valid UTF-8 text") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _utf8(k, param)
            _utf8(v, f"{param}.{k}" if param else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _utf8(v, f"{param}[{i}]")
