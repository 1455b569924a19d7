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


def test_marker_of_another_kind_is_not_replaced(tmp_path):
    from bertrt.atomic import check_destination
    from bertrt.errors import UserError

    out = write_folder_atomically(tmp_path / "run", lambda tmp: (tmp / "report.json").write_text("{}"), kind="loadgen")
    assert check_destination(out, folder=True, kind="loadgen") == out
    with pytest.raises(UserError, match="exists and holds a loadgen folder; choose a new folder, or pass --overwrite"):
        check_destination(out, folder=True, kind="model")
    assert check_destination(out, folder=True, kind="model", overwrite=True) == out


def test_broken_link_and_empty_path(tmp_path):
    from bertrt.atomic import check_destination
    from bertrt.errors import UserError

    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="a broken link"):
        check_destination(link)
    with pytest.raises(UserError, match="--out: the path is empty"):
        check_destination("")


def test_text_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    from bertrt.atomic import write_text_atomically

    path = write_text_atomically(tmp_path / "a.json", "old")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        write_text_atomically(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_folders_written_before_markers_are_recognised(tmp_path):
    from bertrt.atomic import check_destination, folder_kind
    from bertrt.errors import UserError

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert folder_kind(model) is None  # config.json alone: anybody's model
    with pytest.raises(UserError, match="holds files bertrt did not write"):
        check_destination(model, folder=True, kind="model")
    (model / "training_log.json").write_text("{}")
    assert folder_kind(model) == "model" and check_destination(model, folder=True, kind="model") == model
