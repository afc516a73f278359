"""The OpenAPI description of the routes the fast path serves before FastAPI (chat,
completions, embeddings), of transcriptions, of the error shape and of the keys. Documentation
only: requests are checked by validate.py, whose rules these schemas state again, with the
rig's model names as the `model` enum."""

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from llamarig.shared.rig import Rig

Open = ConfigDict(extra="allow")  # unknown fields pass through to the engine


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = Open
    role: Literal["system", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Field(min_length=1)] = Field(
        description="Text; text parts for a user message only; null (or absent) only for an assistant "
        "message with tool_calls. A tool message also needs tool_call_id.")
    name: str | None = None


NonEmpty = Annotated[str, Field(min_length=1)]


def _token(vocab: int | None):
    return Annotated[int, Field(ge=0, lt=vocab)] if vocab else Annotated[int, Field(ge=0)]


def _text_or_tokens(vocab: int | None):
    token = _token(vocab)
    return Union[NonEmpty, Annotated[list[NonEmpty], Field(min_length=1)], Annotated[list[token], Field(min_length=1)],
                 Annotated[list[Annotated[list[token], Field(min_length=1)]], Field(min_length=1)]]


def requests(rig: Rig, vocab: int | None) -> list[type[BaseModel]]:
    """The three request bodies, `model` an enum of the rig's models of the right kind;
    max_tokens bounded by the smallest context among them."""
    chat_names = sorted(n for n, m in rig.models.items() if not m.embeddings) or ["(none)"]
    embed_names = sorted(n for n, m in rig.models.items() if m.embeddings) or ["(none)"]
    context = min((m.context_size for m in rig.models.values() if not m.embeddings), default=1)
    MaxTokens = Annotated[int, Field(ge=1, le=context, description="At most the model's context size.")] | None
    Seed = Annotated[int, Field(ge=-1, le=2**32 - 1)] | None
    Stop = str | Annotated[list[str], Field(max_length=16)] | None

    class Sampling(BaseModel):
        model_config = Open
        model: Literal[tuple(chat_names)]
        max_tokens: MaxTokens = None
        temperature: Annotated[float, Field(ge=0, le=2)] = None  # not null: an engine takes none
        top_p: Annotated[float, Field(ge=0, le=1)] = None
        n: Literal[1] | None = None
        stream: bool = None
        stop: Stop = None
        seed: Seed = None
        presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
        frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
        user: str | None = None

    class ChatCompletionRequest(Sampling):
        messages: Annotated[list[Message], Field(min_length=1)]
        max_completion_tokens: MaxTokens = None
        logprobs: bool | None = None
        top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    class CompletionRequest(Sampling):
        prompt: _text_or_tokens(vocab)
        echo: bool = None
        logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
        suffix: str | None = None

    class EmbeddingRequest(BaseModel):
        model_config = Open
        model: Literal[tuple(embed_names)]
        input: _text_or_tokens(vocab)
        encoding_format: Literal["float", "base64"] = None  # not null: llama-server fails on it
        user: str | None = None

    return [ChatCompletionRequest, CompletionRequest, EmbeddingRequest]


class Usage(BaseModel):
    model_config = Open
    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int


class ChatMessage(BaseModel):
    model_config = Open
    role: str
    content: str | None


class ChatChoice(BaseModel):
    model_config = Open
    index: int
    message: ChatMessage
    finish_reason: str | None


class Generated(BaseModel):
    """What a chat or text completion answer holds besides its choices."""
    model_config = Open
    id: str
    object: str
    created: int
    model: str
    usage: Usage | None = None


class ChatCompletion(Generated):
    """A JSON answer; with "stream": true, server-sent events of chat.completion.chunk objects
    ending with `data: [DONE]`."""
    choices: list[ChatChoice]


class CompletionChoice(BaseModel):
    model_config = Open
    index: int
    text: str
    finish_reason: str | None


class Completion(Generated):
    """A JSON answer; with "stream": true, server-sent events ending with `data: [DONE]`."""
    choices: list[CompletionChoice]


class Embedding(BaseModel):
    model_config = Open
    object: str
    index: int
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    model_config = Open
    object: str
    data: list[Embedding]
    model: str
    usage: Usage | None = None


class Transcription(BaseModel):
    model_config = Open
    text: str


ERRORS = {400: "Invalid request: `param` names the field.", 401: "A missing or wrong key.",
          404: "Unknown model.", 408: "The body did not arrive in time.",
          413: "The body is over its cap; the connection is closed.",
          503: "The model is not ready (loading, failed, shutting down): see Retry-After."}


def answers(ok: type[BaseModel]) -> dict:
    """FastAPI `responses` of a routed path: its answer and the error shape for each refusal."""
    return {200: {"model": ok}, **{s: {"model": ErrorBody, "description": d} for s, d in ERRORS.items()}}


def body_of_name(model: str) -> dict:
    """openapi_extra for a route whose JSON body is read by the fast path, not by FastAPI
    (openapi.py adds the schema, made from the rig, to the components)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model}"}}}}}


TRANSCRIPTION_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "Audio; at most whisper.max_audio_mib."},
        "model": {"type": "string", "description": "whisper-1 or the service's model name."},
        "language": {"type": "string"}, "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": ["json", "text", "srt", "vtt", "verbose_json"]},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1}}}}}}}
