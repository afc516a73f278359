"""Secrets taken out of text before it is kept (the training-sample log) or sent out (the
escalation tier): the rig's own keys word for word, bearer tokens, and the common shapes of API
keys, tokens, private keys and password assignments. Each match becomes [REDACTED:KIND]; an
assignment keeps its name (`password=[REDACTED:assignment]`) so the sample still reads.

Each shape runs only where its trigger (a fixed string) is in the text, and each pattern starts
with a literal, which Python's re finds fast: one alternation of them all cost 0.45 µs a
character (bench/RESULTS.md, session 22)."""
from __future__ import annotations

import re
from typing import Iterable, NamedTuple


class Shape(NamedTuple):
    kind: str
    triggers: tuple[str, ...]  # fixed strings, one of which the text must hold
    pattern: re.Pattern
    lead: str = ""  # letters one of which must come just before the match (kept out of the pattern's start)


def _shape(kind: str, triggers: tuple[str, ...], pattern: str, lead: str = "") -> Shape:
    return Shape(kind, triggers, re.compile(pattern), lead)


TOKEN = r"[A-Za-z0-9_-]"
SHAPES: tuple[Shape, ...] = (
    _shape("private-key", ("-----BEGIN",), r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    _shape("bearer", ("earer",), r"(?P<keep>earer\s+)[A-Za-z0-9._~+/=-]{8,}", lead="Bb"),
    _shape("named-key", ("lr-",), rf"lr-{TOKEN}{{20,}}"),
    _shape("openai-key", ("sk-",), rf"sk-{TOKEN}{{20,}}"),
    _shape("github-token", ("gh", "github_pat_"), r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),
    _shape("aws-key", ("AKIA", "ASIA"), r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])"),
    _shape("slack-token", ("xox",), r"xox[abprs]-[A-Za-z0-9-]{10,}"),
    _shape("google-key", ("AIza",), rf"AIza{TOKEN}{{35}}"),
    _shape("jwt", ("eyJ",), rf"eyJ{TOKEN}{{8,}}\.{TOKEN}{{8,}}\.{TOKEN}{{8,}}"),
    _shape("url-password", ("://",), r"(?P<keep>://[^\s:/@]+:)[^\s@/]+(?=@)"),
)
# `password = x`, `"api_key": "x"`: found from each ':' and '=' (few in prose), the name looked
# for in the few characters before it, lowercased. (One case-blind pattern over the whole text
# cost 26 ms for 256 k characters.)
SEPARATOR = re.compile(r"[:=]")
NAMES = tuple(f"{a}{sep}{b}" if b else a for a, b in (("password", ""), ("passwd", ""), ("pwd", ""), ("secret", ""),
                                                     ("api", "key"), ("access", "token"), ("auth", "token"),
                                                     ("client", "secret"), ("private", "key"))
              for sep in ("_", "-", "") if b or sep == "")
LAST_LETTERS = frozenset("dDyYnNtT \t\"'")  # what may come just before the separator: a name's last letter, a quote, a space
VALUE_AFTER = re.compile(r"\s*[\"']?([^\s\"',;]{3,})")
NAME_WINDOW = 24  # characters before a separator that may hold the name


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        """secrets: text to take out word for word (the rig's keys); empty ones are ignored."""
        self.literal = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.literal:
            if secret in value:
                value = value.replace(secret, "[REDACTED:rig-key]")
        for shape in SHAPES:
            if any(t in value for t in shape.triggers):
                value = shape.pattern.sub(_marker(shape.kind, shape.lead), value)
        return _assignments(value) if ":" in value or "=" in value else value

    def tree(self, value):
        """Every string in a JSON-shaped value redacted (keys of objects too)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        return value


def _assignments(text: str) -> str:
    parts, done = [], 0
    for sep in SEPARATOR.finditer(text):
        at = sep.start()
        if at < done or (at and text[at - 1] not in LAST_LETTERS) or \
                not _named(text[max(0, at - NAME_WINDOW):at].rstrip().rstrip("\"'").lower()):
            continue
        value = VALUE_AFTER.match(text, at + 1)
        if value is None or "[REDACTED:" in value.group(1):
            continue
        parts += [text[done:value.start(1)], "[REDACTED:assignment]"]
        done = value.end(1)
    return "".join(parts) + text[done:] if parts else text


def _named(before: str) -> bool:
    """`before` ends with a secret's name, not inside a longer word."""
    if not before.endswith(NAMES):
        return False
    name = next(n for n in NAMES if before.endswith(n))
    return len(before) == len(name) or not before[-len(name) - 1].isalnum()


def _marker(kind: str, lead: str):
    def mark(m: re.Match) -> str:
        start = m.start()
        if lead:
            if not start or m.string[start - 1] not in lead:
                return m.group(0)
            start -= 1
        if start and m.string[start - 1].isalnum() and kind not in ("url-password", "private-key"):
            return m.group(0)  # inside a longer word (a "task-" prefix, say): not the shape
        return f"{m.groupdict().get('keep') or ''}[REDACTED:{kind}]"
    return mark
