"""``keep_secret``: a local secret is made once, owner-only from creation, and never replaced."""

from __future__ import annotations

import stat
from pathlib import Path

from cxrmesh.local.secret_files import keep_secret


def test_a_secret_is_made_once_owner_only_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "secret"
    assert keep_secret(path, lambda: "first")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not keep_secret(path, lambda: "second")  # a restart reuses it
    assert path.read_text() == "first"


def test_make_is_not_called_when_the_file_exists(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("theirs")

    def make() -> str:
        raise AssertionError("made a second secret")

    assert not keep_secret(path, make)
    assert path.read_text() == "theirs"
