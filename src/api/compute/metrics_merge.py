"""Several processes' Prometheus text as one exposition (work.cpu_processes above 1, all under
/metrics/work/cpu): each family's HELP and TYPE once, then every process's samples with a
`process` label, kept together by family as the text format requires; and
llamarig_work_process_up, 0 for a process that did not answer (the scrape itself stays up
while any does: LlamarigQueueNoPoller means every worker of a queue)."""
from __future__ import annotations

UP = "llamarig_work_process_up"


def merge(texts: list[bytes | None], label: str = "process") -> bytes:
    """texts[i]: process i's exposition, None where it did not answer."""
    heads: dict[str, list[str]] = {UP: [f"# HELP {UP} 1 if this worker process answered the scrape, else 0",
                                        f"# TYPE {UP} gauge"]}
    samples: dict[str, list[str]] = {UP: [f'{UP}{{{label}="{i}"}} {0 if t is None else 1}' for i, t in enumerate(texts)]}
    for index, text in enumerate(texts):
        if text is None:
            continue
        family = None
        for line in text.decode().splitlines():
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    head = heads.setdefault(family, [])
                    if not any(h.split(None, 2)[1] == parts[1] for h in head):
                        head.append(line)
            elif line.strip():
                name = _name(line)
                key = family if family and name.startswith(family) else name
                heads.setdefault(key, [])
                samples.setdefault(key, []).append(_labelled(line, len(name), f'{label}="{index}"'))
    lines = [line for key, head in heads.items() for line in head + samples.get(key, [])]
    return ("\n".join(lines) + "\n").encode()


def _name(line: str) -> str:
    ends = [i for i in (line.find("{"), line.find(" ")) if i >= 0]
    return line[:min(ends)] if ends else line


def _labelled(line: str, at: int, pair: str) -> str:
    if line[at:at + 1] == "{":
        rest = line[at + 1:]
        return f"{line[:at]}{{{pair}{'' if rest.startswith('}') else ','}{rest}"
    return f"{line[:at]}{{{pair}}}{line[at:]}"
