"""`llamarig keys`, `usage` and `audit`: run where the rig's run folder is (the bundle's
machine, or `docker exec`), reading and writing its files directly, so they work with the API
down too. Keys made or revoked here are in force in the API within a second."""
from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import socket
import sys
import time

from llamarig.shared.audit import AuditLog
from llamarig.shared.keystore import KeyStore, NamedKey, parse_expiry, parse_quota
from llamarig.shared.usage_store import UsageStore, render


def _who() -> str:
    return f"local:{getpass.getuser()}@{socket.gethostname()}"


def keys_add(rig, args) -> int:
    models = tuple(m for m in (args.models or "").split(",") if m) or None
    unknown = [m for m in models or () if m not in rig.models and m != "whisper"]
    if unknown:
        print(f"llamarig: unknown_model: --models names {', '.join(unknown)}, not in this rig; known: "
              f"{', '.join(sorted(rig.models))}, whisper")
        return 2
    key = NamedKey(args.name, args.scope, models, args.rpm, args.tpm, args.concurrent,
                   parse_quota(args.quota_tokens) if args.quota_tokens else None,
                   parse_expiry(args.expires) if args.expires else None)
    secret = KeyStore(rig.run_dir).add(key)
    AuditLog(rig.run_dir).write(_who(), "cli keys add", args.name, "created", scope=args.scope)
    print(secret)
    print(f"(the key of {args.name!r}, shown this once: the rig keeps only its SHA-256)", flush=True)
    return 0


def keys_list(rig, as_json: bool) -> int:
    rows = [k.row() for k in KeyStore(rig.run_dir).all()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no named keys (keys from api.keys files and the environment are not listed)")
        return 0
    print(f"{'name':20} {'scope':8} {'state':8} {'models':16} {'limits':28} last used")
    for r in rows:
        state = "revoked" if "revoked_at" in r else "expired" if r.get("expires_at", 1e18) <= time.time() else "active"
        limits = " ".join(f"{k}={r[k]}" for k in ("rpm", "tpm", "concurrent", "quota") if k in r) or "-"
        print(f"{r['name']:20} {r['scope']:8} {state:8} {','.join(r.get('models', ['all'])):16} {limits:28} "
              f"{_when(r.get('last_used_at'))}")
    return 0


def keys_revoke(rig, name: str) -> int:
    KeyStore(rig.run_dir).revoke(name)
    AuditLog(rig.run_dir).write(_who(), "cli keys revoke", name, "revoked")
    print(f"revoked {name!r}: refused by the API within a second")
    return 0


def usage(rig, since: str | None, by: str, fmt: str) -> int:
    rows = UsageStore(rig.run_dir).query(since, tuple(b for b in by.split(",") if b))
    print(render(rows, fmt))
    return 0


def audit(rig, since: str | None, as_json: bool) -> int:
    for row in AuditLog(rig.run_dir).read(since):
        if as_json:
            print(json.dumps(row))
        else:
            extra = " ".join(f"{k}={v}" for k, v in row.items() if k not in ("time", "key", "route", "target", "outcome"))
            print(f"{row['time']}  {row['key']:24} {row['route']:40} {row['target']:20} {row['outcome']} {extra}".rstrip())
    return 0


def _when(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else "never"


def samples_export(rig, since: str, dest: str) -> int:
    from llamarig.work import samples
    try:
        start = samples.parse_since(since)
    except ValueError as e:
        print(f"llamarig: bad_since: {e}", file=sys.stderr)
        return 2
    folder = samples.folder_of(rig)
    if not samples.files(folder):
        why = "" if rig.work.samples.enabled else " (work.samples.enabled is false in this rig)"
        print(f"llamarig: no_samples: no sample files in {folder}{why}", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        out = sys.stdout if dest == "-" else stack.enter_context(open(dest, "w", encoding="utf-8"))
        count = samples.export(folder, start, out)
    print(f"{count} samples since {since} written to {dest}", file=sys.stderr)
    return 0


def add_parsers(sub, rig_of) -> None:
    keys = sub.add_parser("keys", help="named keys: add (prints the key once), list, revoke").add_subparsers(
        dest="keys_command", required=True)
    s = keys.add_parser("add", help="make a key; the rig keeps only its SHA-256")
    s.add_argument("name")
    s.add_argument("--scope", choices=("client", "operator"), required=True)
    s.add_argument("--models", help="comma-separated models it may use (default: all; Whisper is 'whisper')")
    s.add_argument("--rpm", type=int, help="requests per minute")
    s.add_argument("--tpm", type=int, help="tokens (prompt and completion) per minute")
    s.add_argument("--concurrent", type=int, help="requests in progress at once")
    s.add_argument("--quota-tokens", metavar="day:N|month:N", help="tokens per UTC day or month")
    s.add_argument("--expires", metavar="DATE", help="the key stops working then (a date: at its start, UTC)")
    s.set_defaults(fn=lambda a: keys_add(rig_of(a), a))
    s = keys.add_parser("list", help="names, scopes, limits and last use (never a key)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=lambda a: keys_list(rig_of(a), a.json))
    s = keys.add_parser("revoke", help="refused by the API within a second, without a restart")
    s.add_argument("name")
    s.set_defaults(fn=lambda a: keys_revoke(rig_of(a), a.name))
    s = sub.add_parser("usage", help="usage by key (requests, tokens, audio seconds, embedding inputs)")
    s.add_argument("--since", metavar="YYYY-MM-DD")
    s.add_argument("--by", default="key", help="one or more of key,model,day (default key)")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--csv", dest="fmt", action="store_const", const="csv")
    fmt.add_argument("--json", dest="fmt", action="store_const", const="json")
    s.set_defaults(fn=lambda a: usage(rig_of(a), a.since, a.by, a.fmt or "table"))
    s = sub.add_parser("audit", help="the audit log: admin actions, plan submits, keys made and revoked")
    s.add_argument("--since", metavar="DATE", help="an ISO date or time, UTC")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=lambda a: audit(rig_of(a), a.since, a.json))
    exports = sub.add_parser("samples", help="the training-sample log of llm tasks (work.samples)").add_subparsers(
        dest="samples_command", required=True)
    s = exports.add_parser("export", help="the samples kept since a date as JSON lines, secrets already redacted")
    s.add_argument("--since", metavar="DATE", required=True, help="YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC unless it "
                   "says)")
    s.add_argument("file", help="where to write them; - for standard output")
    s.set_defaults(fn=lambda a: samples_export(rig_of(a), a.since, a.file))
