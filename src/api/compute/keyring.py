"""Whose key a request carries: the named keys of keys.sqlite and the keys from files and the
environment (named `legacy-client` and `operator`), looked up by SHA-256 (one hash and one dict
lookup, whatever the number of keys; the digest's timing says nothing about the key). The
store is read again within WATCH_S of any change, so `llamarig keys revoke` needs no restart."""
from __future__ import annotations

import asyncio
import logging
import time

from llamarig.shared.keys import Keys
from llamarig.shared.keystore import KeyStore, NamedKey, digest

log = logging.getLogger("llamarig.api")
WATCH_S = 0.25
TOUCH_S = 10.0  # last-use times are written this often
LEGACY_CLIENT = NamedKey("legacy-client", "client")
OPERATOR = NamedKey("operator", "operator")
NO_KEYS = NamedKey("none", "operator")  # a rig without keys: every route open, usage under "none"
WORKERS = frozenset({"legacy-client", "operator", "none"})  # the keys the workers hold: they may say for whom
CALLER = "llamarig.caller"  # scope key: the NamedKey a request's key belongs to (None: no valid key sent)


class KeyRing:
    def __init__(self, legacy: Keys, store: KeyStore | None):
        self.legacy, self.store = legacy, store
        self.known: dict[bytes, NamedKey] = {}
        self.by_name: dict[str, NamedKey] = {}
        self.version: tuple | None = None
        self.last_used: dict[str, float] = {}
        self.reload()

    @property
    def any(self) -> bool:
        """Some key exists (revoked ones count: a rig that had keys stays closed)."""
        return bool(self.known)

    def reload(self) -> None:
        known = {digest(k): LEGACY_CLIENT for k in self.legacy.client}
        if self.legacy.operator:
            known[digest(self.legacy.operator)] = OPERATOR
        if self.store is not None:
            self.version = self.store.version()
            known.update((d, key) for key, d in self.store.with_digests())
        self.known = known
        self.by_name = {k.name: k for k in known.values()}
        log.info("keys read", extra={"named": sum(1 for k in known.values() if k not in (LEGACY_CLIENT, OPERATOR)),
                                     "revoked": sum(1 for k in known.values() if k.revoked_at)})

    def identify(self, sent: bytes) -> NamedKey | None:
        found = digest(sent)
        key = self.known.get(found)
        if key is None and self.store is not None and self._changed():  # a key made a moment ago works at once
            self.reload()
            key = self.known.get(found)
        return key

    def _changed(self) -> bool:
        try:
            return self.store.version() != self.version
        except Exception:  # (watch() says it)
            return False

    @staticmethod
    def refusal(key: NamedKey, now: float) -> str | None:
        """Why a known key is refused now (revoked, expired), or None."""
        if key.revoked_at is not None:
            return "revoked"
        if key.expires_at is not None and now >= key.expires_at:
            return "expired"
        return None

    async def watch(self) -> None:
        """Read the store again when it changed; write the last-use times now and then."""
        touched = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                if self.store.version() != self.version:
                    self.reload()
                if time.monotonic() - touched >= TOUCH_S and self.last_used:
                    used, self.last_used = self.last_used, {}
                    self.store.touch(used)
                    touched = time.monotonic()
            except Exception as e:  # a locked or unreadable store: the keys read last stay, and it is said
                log.error("key store not read: the keys read last stay in force",
                          extra={"error": f"{type(e).__name__}: {e}", "store": str(self.store.path)})
