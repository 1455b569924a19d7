"""Folders are written whole or not at all."""

import pytest

from bertrt.atomic import write_folder_atomically


def test_a_failed_write_leaves_the_old_folder_and_no_debris(tmp_path):
    out = tmp_path / "model"
    write_folder_atomically(out, lambda tmp: (tmp / "a.txt").write_text("old"))

    def broken(tmp):
        (tmp / "a.txt").write_text("new, half written")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_folder_atomically(out, broken)
    assert (out / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_replacement_and_refusal(tmp_path):
    out = tmp_path / "model"
    write_folder_atomically(out, lambda tmp: (tmp / "a.txt").write_text("one"))
    write_folder_atomically(out, lambda tmp: (tmp / "b.txt").write_text("two"))
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    with pytest.raises(ValueError, match="keep me"):
        write_folder_atomically(out, lambda tmp: None, may_replace=lambda existing: False, refuse_message="keep me")
    assert (out / "b.txt").read_text() == "two"
