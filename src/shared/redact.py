"""Secrets taken out of text before it is kept (the training-sample log): the rig's own keys
word for word, bearer tokens, and the common shapes of API keys, tokens, private keys and
password assignments. One alternation, one pass over the text; each match is replaced by
[REDACTED:KIND], keeping the name in a `password=` assignment so the sample still reads."""
from __future__ import annotations

import re
from typing import Iterable

# kind, pattern: a pattern's group "keep" (if any) is written back before the mark.
PATTERNS: tuple[tuple[str, str], ...] = (
    ("private-key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    ("bearer", r"(?P<keep_bearer>\b[Bb]earer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    ("named-key", r"\blr-[A-Za-z0-9_-]{20,}"),
    ("openai-key", r"\bsk-[A-Za-z0-9_-]{20,}"),
    ("github-token", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),
    ("aws-key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("slack-token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    ("google-key", r"\bAIza[0-9A-Za-z_-]{35}"),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    ("url-password", r"(?P<keep_url>\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(?=@)"),
    ("assignment", r"(?P<keep_assign>(?i:\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|"
                   r"auth[_-]?token|client[_-]?secret|private[_-]?key)\b)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]{3,}"),
)


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        """secrets: text to take out word for word (the rig's keys); empty ones are ignored."""
        literal = sorted({s for s in secrets if s}, key=len, reverse=True)
        parts = [f"(?P<rig_key>{'|'.join(map(re.escape, literal))})"] if literal else []
        parts += [f"(?P<{kind.replace('-', '_')}>{pattern})" for kind, pattern in PATTERNS]
        self.pattern = re.compile("|".join(parts))

    def text(self, value: str) -> str:
        return self.pattern.sub(_mark, value)

    def tree(self, value):
        """Every string in a JSON-shaped value redacted (keys of objects too)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        return value


def _mark(m: re.Match) -> str:
    groups = m.groupdict()
    kind = next(k for k, v in groups.items() if v is not None and not k.startswith("keep_"))
    kept = next((v for k, v in groups.items() if k.startswith("keep_") and v), "")
    return f"{kept}[REDACTED:{kind.replace('_', '-')}]"
