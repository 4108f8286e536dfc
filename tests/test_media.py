"""media.py: discovery of every kind, the one image rule, streamed video frames, audio from any container."""

import os

import pytest

import media


def test_discovery_skips_hidden_and_says_what_it_left_out(tmp_path):
    for name in ["b.wav", "a.FLAC", ".hidden.wav", "notes.txt", "c.mp3", "v.MP4", "p.jpg", "x.xyz",
                 "sub/d.wav", "sub/e.m4a", ".git/e.wav"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    flat = media.discover(tmp_path)
    assert [p.as_posix() for p in flat.files] == ["a.FLAC", "b.wav", "c.mp3", "p.jpg", "v.MP4"]
    assert flat.in_subfolders == 2 and flat.other_extensions == {".txt": 1, ".xyz": 1}
    lines = flat.left_out_lines()
    assert any("2 media file(s) in sub-folders: add --recursive" in line for line in lines)
    assert any(".txt x1" in line and ".xyz x1" in line for line in lines)
    deep = media.discover(tmp_path, recursive=True)
    assert [p.as_posix() for p in deep.files] == ["a.FLAC", "b.wav", "c.mp3", "p.jpg", "sub/d.wav", "sub/e.m4a",
                                                  "v.MP4"]
    assert deep.in_subfolders == 0
    only_wav = media.discover(tmp_path, extensions=("wav",), recursive=True)
    assert [p.as_posix() for p in only_wav.files] == ["b.wav", "sub/d.wav"]


def test_kind_by_extension_is_case_insensitive():
    assert [media.kind_of(n) for n in ("a.WAV", "b.m4a", "c.Mp4", "d.webm", "e.JPG", "f.gif", "g.txt")] == \
        ["audio", "audio", "video", "video", "image", "image", None]


def test_discovery_survives_symlink_loop(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.wav").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    found = [p.as_posix() for p in media.discover(tmp_path, recursive=True).files]
    assert found == ["a/x.wav"]


def test_missing_folder_says_which():
    with pytest.raises(FileNotFoundError, match="--audio_dir"):
        media.discover("/nonexistent/folder")
