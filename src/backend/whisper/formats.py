"""OpenAI transcription response formats: json, text, verbose_json, srt, vtt."""
from __future__ import annotations

from dataclasses import asdict

from llamarig.backend.whisper.transcriber import Transcript

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(t: Transcript) -> str:
    return "".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n\n"
                   for i, s in enumerate(t.segments, 1))


def vtt(t: Transcript) -> str:
    return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n\n"
                                  for s in t.segments)


def verbose_json(t: Transcript) -> dict:
    return {"task": "transcribe", "language": t.language, "duration": t.duration, "text": t.text,
            "segments": [asdict(s) for s in t.segments]}


def render(t: Transcript, fmt: str) -> tuple[object, str]:
    """(body, media type) for a format in FORMATS."""
    if fmt == "json":
        return {"text": t.text, "duration": t.duration, "language": t.language}, "application/json"
    if fmt == "verbose_json":
        return verbose_json(t), "application/json"
    if fmt == "srt":
        return srt(t), "text/plain"
    if fmt == "vtt":
        return vtt(t), "text/vtt"
    return t.text, "text/plain"
