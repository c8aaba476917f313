"""The emulator's request log on its own: keys appear only as short fingerprints."""

from __future__ import annotations

from imagen4ctl.emulator import fingerprint


def test_fingerprints_are_short_stable_and_keyless() -> None:
    key = "abc123:supersecret"
    assert fingerprint(key) == fingerprint(key) != fingerprint("abc123:supersecreT")
    assert len(fingerprint(key)) == 12
    assert "supersecret" not in fingerprint(key)
