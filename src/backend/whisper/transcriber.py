"""faster-whisper behind one small class: device choice, audio decoding, transcription."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import BinaryIO

from llamarig.shared.errors import LlamarigError

log = logging.getLogger(__name__)


class AudioError(LlamarigError):
    """The upload is not audio that can be decoded."""


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0


@dataclass
class Transcript:
    text: str
    language: str
    duration: float
    segments: list[Segment]


def pick_device(wanted: str) -> tuple[str, str]:
    """(device, reason). auto takes CUDA when CTranslate2 sees a CUDA device."""
    import ctranslate2

    if wanted != "auto":
        return wanted, f"device {wanted} asked for"
    try:
        count = ctranslate2.get_cuda_device_count()
    except Exception as e:  # a CPU-only build raises instead of answering 0
        return "cpu", f"CUDA unavailable to CTranslate2 ({e}); using the CPU"
    if count > 0:
        return "cuda", f"CTranslate2 sees {count} CUDA device(s)"
    return "cpu", "CTranslate2 sees no CUDA device; using the CPU"


class Transcriber:
    def __init__(self, model_dir: str, device: str, compute_type: str, max_new_tokens: int | None):
        from faster_whisper import WhisperModel

        self.device, self.device_reason = pick_device(device)
        log.info("whisper device", extra={"device": self.device, "reason": self.device_reason})
        self.model = WhisperModel(model_dir, device=self.device, compute_type=compute_type)
        self.max_new_tokens = max_new_tokens

    def decode(self, audio: BinaryIO):
        from faster_whisper import decode_audio

        try:
            samples = decode_audio(audio)
        except Exception as e:  # PyAV raises many error types for bad input
            raise AudioError("bad_audio", f"the file could not be decoded as audio: {e}") from None
        if len(samples) == 0:
            raise AudioError("bad_audio", "the file holds no audio samples")
        return samples

    def transcribe(self, audio: BinaryIO, language: str | None, prompt: str | None,
                   temperature: float, timestamps: bool) -> Transcript:
        samples = self.decode(audio)
        options = {"max_new_tokens": self.max_new_tokens} if self.max_new_tokens else {}
        segments, info = self.model.transcribe(
            samples, language=language or None, initial_prompt=prompt or None, temperature=temperature,
            beam_size=1, without_timestamps=not timestamps, condition_on_previous_text=False, **options)
        parts = [Segment(s.id, s.start, s.end, s.text, list(s.tokens), s.avg_logprob, s.no_speech_prob,
                         s.compression_ratio, s.temperature) for s in segments]
        return Transcript("".join(s.text for s in parts).strip(), info.language, info.duration, parts)
