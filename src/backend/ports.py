"""The TCP ports a rig listens on, checked free before anything starts (`llamarig up`, `run`, the
image's preflight): a program that finds its port taken loops in BACKOFF, or worse, its peers
talk to whatever holds the port. Each taken port is refused with its rig field and, where this
user may see it, the process that holds it."""
from __future__ import annotations

import socket

from llamarig.shared.errors import RigError
from llamarig.shared.rig import Rig, claimed_ports


def check(rig: Rig) -> None:
    problems = taken(rig)
    if problems:
        raise RigError(rig.source, problems)


def taken(rig: Rig) -> list[str]:
    problems = []
    for port, field in claimed_ports(rig):
        host = rig.api.host if field == "api.port" else "127.0.0.1"
        if not is_free(host, port):
            problems.append(f"{field}: port {port} on {host} is already in use{holder(port)}: stop that program, "
                            f"or give {field.split(' ')[0]} another port")
    return problems


def is_free(host: str, port: int) -> bool:
    """Whether a server could listen there now (SO_REUSEADDR, as servers set it: a connection
    in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def holder(port: int) -> str:
    """' by pid N (its command line)' for the process listening on the port, as far as visible."""
    import psutil

    try:
        listening = [c for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    except psutil.Error:
        return ""
    for c in listening:
        if c.pid:
            try:
                p = psutil.Process(c.pid)
                return f" by pid {c.pid} ({_shown(p.cmdline()) or p.name()})"
            except psutil.Error:
                continue
    return " (by a process this user cannot see)" if listening else ""


def _shown(cmdline: list[str], limit: int = 600) -> str:
    """The command line, cut only past `limit` characters: its paths (a run folder) are what
    tells whose program it is, and they grow with where the rig lives."""
    text = " ".join(cmdline)
    return text if len(text) <= limit else text[:limit] + "..."
