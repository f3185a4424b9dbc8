"""Webhook secrets sealed at rest (runledger.auth.sealing): seal/open, rotation, the key file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from runledger.auth.sealing import KEY_FILE, SEALED_PREFIX, SecretBox, SecretUnreadable, load_box


def test_a_sealed_secret_opens_and_does_not_show_it() -> None:
    box = SecretBox([Fernet.generate_key()])
    sealed = box.seal("s3cr3t-value")
    assert sealed.startswith(SEALED_PREFIX) and "s3cr3t-value" not in sealed
    assert box.seal("s3cr3t-value") != sealed  # a fresh IV each time
    assert box.open(sealed) == "s3cr3t-value"


def test_a_secret_stored_before_sealing_is_read_as_is_and_sealed_again() -> None:
    box = SecretBox([Fernet.generate_key()])
    assert box.open("plain-old-secret") == "plain-old-secret"
    resealed = box.resealed("plain-old-secret")
    assert resealed is not None and box.open(resealed) == "plain-old-secret"
    assert box.resealed(resealed) is None  # already under the first key


def test_rotation_new_key_first_old_one_still_opens_until_dropped() -> None:
    old_key, new_key = Fernet.generate_key(), Fernet.generate_key()
    old = SecretBox([old_key])
    stored = old.seal("rotate-me")
    rotating = SecretBox.from_text(f"{new_key.decode()}, {old_key.decode()}")
    assert rotating.open(stored) == "rotate-me"
    resealed = rotating.resealed(stored)
    assert resealed is not None
    new_only = SecretBox([new_key])
    assert new_only.open(resealed) == "rotate-me"
    with pytest.raises(SecretUnreadable):
        new_only.open(stored)  # sealed under the dropped key
    with pytest.raises(SecretUnreadable):
        new_only.resealed(stored)


@pytest.mark.parametrize("text", ["", " , ", "not-a-key", "c2hvcnQ="])
def test_bad_keys_are_refused_with_the_variable_named(text: str) -> None:
    with pytest.raises(ValueError, match="RUNLEDGER_SECRETS_KEY"):
        SecretBox.from_text(text)


def test_without_the_variable_the_key_lives_in_the_state_dir(tmp_path: Path) -> None:
    first = load_box("", tmp_path / "state")
    key_file = tmp_path / "state" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = load_box("", tmp_path / "state")  # another process of the same stack
    assert second.open(first.seal("shared")) == "shared"
    assert list(key_file.parent.iterdir()) == [key_file]  # no temporary file left


def test_the_variable_wins_over_the_state_dir(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    box = load_box(key, tmp_path)
    assert not (tmp_path / KEY_FILE).exists()
    assert SecretBox.from_text(key).open(box.seal("x")) == "x"
