"""The legacy (raw-form) fallback of password verification admits no password the
normalised check would not, and costs at most two hashings, for a known and an unknown
user alike."""

from __future__ import annotations

import unicodedata

import pytest

from examples.ecom import passwords

LIGATURE = "\ufb01le-cabinet-\uff21"  # fi ligature, fullwidth A: NFKC 'file-cabinet-A'
NORMAL = unicodedata.normalize("NFKC", LIGATURE)


@pytest.fixture
def kdf_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the password text of every scrypt run (scrypt itself still runs)."""
    calls: list[str] = []
    real = passwords._kdf

    def counting(password: str, *args: object) -> bytes:
        calls.append(password)
        return real(password, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(passwords, "_kdf", counting)
    return calls


def test_a_new_hash_admits_only_the_normalised_password(kdf_calls: list[str]) -> None:
    """A hash made now verifies the password in any spelling with the same NFKC form and
    nothing else: the raw fallback matches only the normalised text, which the first
    check already took."""
    encoded = passwords.hash_password(LIGATURE)
    assert passwords.verify_password(LIGATURE, encoded)
    assert passwords.verify_password(NORMAL, encoded)
    assert not passwords.verify_password("file-cabinet-a", encoded)
    assert not passwords.verify_password("\ufb01le-cabinet-\uff41", encoded)


def test_at_most_two_hashings_known_or_unknown_user(kdf_calls: list[str]) -> None:
    """A wrong password whose NFKC form differs costs two hashings against a user's hash
    and against the dummy of an unknown email (so a failed login takes as long either
    way); an already-normal one costs one."""
    encoded = passwords.hash_password(NORMAL)
    passwords.dummy_hash()
    for wrong, hashings in ((LIGATURE + "x", 2), (NORMAL + "x", 1)):
        for target in (encoded, None):
            kdf_calls.clear()
            assert not passwords.verify_or_dummy(wrong, target)
            assert len(kdf_calls) == hashings, (wrong, target, kdf_calls)
