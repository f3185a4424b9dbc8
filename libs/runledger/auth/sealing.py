"""Secrets RunLedger must use again (webhook signing secrets), sealed at rest.

An API key can be stored as a hash, but a webhook's secret signs every delivery, so it must
be recoverable. It is stored sealed with Fernet (AES-128-CBC + HMAC-SHA256, `cryptography`)
under the deployment's sealing keys: a copy of the database alone does not let anyone sign
deliveries that tenants' receivers would accept.

Keys: RUNLEDGER_SECRETS_KEY, one or more Fernet keys separated by commas. The first seals;
every one opens. Rotation: add the new key last on every process (all can open what it will
seal); then move it first (API processes re-seal every stored secret at start); drop the old
one once no process lists it first. Unset, the key
lives in `<state dir>/secrets.key`, created on first use: the embedded mode's processes share
that directory; a distributed deployment must set the variable on every API and analysis
process.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SEALED_PREFIX = "fernet:"
KEY_FILE = "secrets.key"


class SecretUnreadable(Exception):
    """A sealed secret none of the configured keys opens (sealed under a key since removed)."""


class SecretBox:
    """Seals and opens secrets with the deployment's keys (the first one seals)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one sealing key is needed")
        self._primary = Fernet(keys[0])
        self._all = MultiFernet([Fernet(k) for k in keys])

    @classmethod
    def from_text(cls, text: str) -> SecretBox:
        """Keys as RUNLEDGER_SECRETS_KEY gives them: Fernet keys, comma-separated, first seals."""
        keys = [part.strip().encode() for part in text.split(",") if part.strip()]
        try:
            return cls(keys)
        except ValueError as exc:  # binascii.Error is a ValueError too
            raise ValueError(f"RUNLEDGER_SECRETS_KEY: not a list of Fernet keys ({exc})") from None

    def seal(self, secret: str) -> str:
        """The stored form of `secret`: "fernet:<token>" under the first key."""
        return SEALED_PREFIX + self._primary.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret of a stored value; a value stored before sealing existed is returned as is."""
        if not stored.startswith(SEALED_PREFIX):
            return stored
        try:
            return self._all.decrypt(stored[len(SEALED_PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretUnreadable("sealed under a key RUNLEDGER_SECRETS_KEY no longer lists") from None

    def resealed(self, stored: str) -> str | None:
        """`stored` sealed under the first key, or None when it already is (plaintext is sealed)."""
        if stored.startswith(SEALED_PREFIX):
            token = stored[len(SEALED_PREFIX) :].encode()
            try:
                self._primary.decrypt(token)
                return None
            except InvalidToken:
                pass
        return self.seal(self.open(stored))


def load_box(configured: str, state_dir: Path) -> SecretBox:
    """The box of RUNLEDGER_SECRETS_KEY, else of `<state_dir>/secrets.key` (created, mode 0600,
    when missing: the embedded mode's processes share it)."""
    if configured.strip():
        return SecretBox.from_text(configured)
    path = state_dir / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secrets-key-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(Fernet.generate_key())
            # link() does not replace: of two processes starting at once, the first one's key wins
            # and both read it whole.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return SecretBox.from_text(path.read_text())
