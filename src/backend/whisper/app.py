"""The transcription service: OpenAI-compatible POST /v1/audio/transcriptions and GET /health."""
from __future__ import annotations

import asyncio
import io

from fastapi import FastAPI, File, Form, UploadFile
from starlette.responses import JSONResponse, PlainTextResponse, Response

from llamarig.backend.whisper.formats import FORMATS, render
from llamarig.backend.whisper.transcriber import AudioError, Transcriber
from llamarig.shared.api_errors import error_response

MIB = 1024 * 1024


def create_app(transcriber: Transcriber, model_name: str, max_audio_mib: int) -> FastAPI:
    app = FastAPI(title="llamarig whisper")
    # CTranslate2 already uses every core for one transcription; running two at once only
    # makes both slower.
    one_at_a_time = asyncio.Lock()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "device": transcriber.device,
                "device_reason": transcriber.device_reason}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(file: UploadFile = File(...), model: str = Form(model_name),
                             language: str | None = Form(None), prompt: str | None = Form(None),
                             response_format: str = Form("json"), temperature: float = Form(0.0)) -> Response:
        if response_format not in FORMATS:
            return error_response(400, "bad_response_format", f"response_format must be one of {FORMATS}",
                                  "response_format")
        if model not in (model_name, "whisper-1"):
            return error_response(404, "model_not_found", f"model {model!r} is not served here; "
                                  f"this service has {model_name!r}", "model")
        data = await file.read(max_audio_mib * MIB + 1)
        if len(data) > max_audio_mib * MIB:
            return error_response(413, "audio_too_large", f"the upload is over {max_audio_mib} MiB", "file")
        async with one_at_a_time:
            try:
                transcript = await asyncio.to_thread(
                    transcriber.transcribe, io.BytesIO(data), language, prompt, temperature,
                    response_format in ("verbose_json", "srt", "vtt"))
            except AudioError as e:
                return error_response(400, e.code, e.reason, "file")
        body, media = render(transcript, response_format)
        # The audio's length for the API's usage by key, whatever the format says of it.
        seconds = {"x-audio-seconds": f"{transcript.duration:.3f}"}
        if media == "application/json":
            return JSONResponse(body, headers=seconds)
        return PlainTextResponse(body, media_type=media, headers=seconds)

    return app
