"""media.py: discovery of every kind, the one image rule, streamed video frames, audio from any container."""

import os

import pytest

from embedkit import media


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
    assert [p.as_posix() for p in deep.files] == [
        "a.FLAC", "b.wav", "c.mp3", "p.jpg", "sub/d.wav", "sub/e.m4a", "v.MP4"]
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


# -- audio from any container, against a WAV of the same signal --------------------------------------
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from embedkit import audio_io  # noqa: E402
from tests.conftest import color_frames, encode_audio, encode_video, tone, write_wav  # noqa: E402


def _signal(sr: int, seconds: float = 1.5) -> np.ndarray:
    """A tone with silence and one click at a known sample, to measure alignment."""
    x = tone(440, seconds, sr, 0.3)
    x[: sr // 10] = 0.0
    x[sr // 5] = 0.95
    return x


def _lag(decoded: np.ndarray, reference: np.ndarray, sr: int) -> int:
    """Offset (samples) of `decoded` against `reference` around the click."""
    c = sr // 5
    window = reference[c - 200 : c + 200].astype(np.float64)
    seg = decoded[c - 400 : c + 400].astype(np.float64)
    return int(np.argmax(np.correlate(seg, window, "valid"))) - 200


@pytest.mark.parametrize("name, codec, fmt, exact", [
    ("x.m4a", "alac", "s16p", True),  # lossless: the same 16-bit samples
    ("x.flac.mkv", "flac", "s16", True),
    ("x.webm", "libopus", "flt", False),
    ("x.m4a", "aac", "fltp", False),
])
def test_audio_containers_match_a_wav_of_the_same_signal(tmp_path, name, codec, fmt, exact):
    sr = 48000
    pcm = np.round(_signal(sr) * 32767).astype(np.int16)  # the same 16-bit samples in both files
    wav, _ = audio_io.decode(write_wav(tmp_path / "x.wav", pcm, sr, "PCM_16"))
    x = pcm if fmt.startswith("s16") else (pcm / 32768).astype(np.float32)
    got, got_sr = audio_io.decode(encode_audio(tmp_path / name, x, sr, codec, fmt))
    assert got_sr == sr and got.dtype == np.float32
    assert len(got) == len(wav), (len(got), len(wav))  # sample-accurate length (encoder padding trimmed)
    assert _lag(got, wav, sr) == 0  # and aligned: no priming samples left
    if exact:
        np.testing.assert_array_equal(got, wav)
    else:
        assert np.corrcoef(got[sr // 4 :], wav[sr // 4 :])[0, 1] > 0.99


def test_video_sound_track_is_the_audio(tmp_path):
    sr = 44100
    x = _signal(sr, 2.0)
    path = encode_video(tmp_path / "v.mp4", color_frames(10), fps=10, audio=x, sr=sr)
    got, got_sr = audio_io.decode(path)
    assert got_sr == sr and len(got) == len(x) and _lag(got, x, sr) == 0


def test_soundfile_formats_keep_their_samples(tmp_path):
    """What soundfile reads is still read by soundfile: the channel mean of its float32 samples,
    bit for bit."""
    sr = 22050
    st = np.stack([tone(300, 0.5, sr), tone(500, 0.5, sr, 0.2)], 1)
    for name, subtype in (("s.flac", "PCM_16"), ("s.wav", "FLOAT"), ("s.ogg", "VORBIS")):
        path = write_wav(tmp_path / name, st, sr, subtype)
        want = sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1, dtype=np.float32)
        got, _ = audio_io.decode(path)
        np.testing.assert_array_equal(got, want)


def test_a_file_whose_extension_lies(tmp_path):
    from PIL import Image

    Image.fromarray(color_frames(1)[0]).save(tmp_path / "photo.jpg")
    fake = tmp_path / "song.wav"
    fake.write_bytes((tmp_path / "photo.jpg").read_bytes())
    with pytest.raises(audio_io.MediaError, match=r"holds a JPEG image \(its extension says \.wav\)"):
        audio_io.decode(fake)
    # an M4A named .wav is simply decoded by FFmpeg
    m4a = encode_audio(tmp_path / "a.m4a", _signal(48000), 48000, "aac")
    (tmp_path / "b.wav").write_bytes(m4a.read_bytes())
    assert len(audio_io.decode(tmp_path / "b.wav")[0]) == len(audio_io.decode(m4a)[0])


# -- images: the one rule ------------------------------------------------------------------------------
def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_image_rule_modes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(media.load_image(_save(Image.fromarray(rgb), tmp_path / "a.png")), rgb)
    # grayscale and palette to RGB as Pillow converts them
    gray = rgb[:, :, 0]
    got = media.load_image(_save(Image.fromarray(gray), tmp_path / "g.png"))
    np.testing.assert_array_equal(got, np.repeat(gray[:, :, None], 3, axis=2))
    pal = Image.fromarray(rgb).quantize(16)
    np.testing.assert_array_equal(media.load_image(_save(pal, tmp_path / "p.png")),
                                  np.asarray(pal.convert("RGB")))
    # alpha dropped without compositing: the colour under a transparent pixel is kept
    rgba = np.dstack([rgb, np.zeros((20, 30), np.uint8)])
    np.testing.assert_array_equal(media.load_image(_save(Image.fromarray(rgba), tmp_path / "t.png")), rgb)
    # 16-bit gray scaled to 8 bits (x / 257, rounded), not clipped at 255 as convert("RGB") would
    g16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 109)
    got = media.load_image(_save(Image.fromarray(g16), tmp_path / "g16.png"))
    np.testing.assert_array_equal(got[:, :, 1], np.round(g16 / 257.0).astype(np.uint8))
    assert (np.asarray(Image.open(tmp_path / "g16.png").convert("RGB"))[:, :, 0] == 255).mean() > 0.5
    # CMYK through Pillow's conversion
    cmyk = Image.fromarray(rgb).convert("CMYK")
    np.testing.assert_array_equal(media.load_image(_save(cmyk, tmp_path / "c.jpg", quality=100)).shape,
                                  (20, 30, 3))
    # GIF: the first frame of an animation
    frames = [Image.fromarray(np.full((10, 10, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert media.load_image(tmp_path / "anim.gif").max() == 0
    # 1x1 is an image like any other
    assert media.load_image(_save(Image.fromarray(rgb[:1, :1]), tmp_path / "one.png")).shape == (1, 1, 3)


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(Image.fromarray(img), tmp_path / "phone.jpg", exif=exif, quality=95)
    got = media.load_image(path)
    assert got.shape == (40, 20, 3)  # portrait, as a phone shows it
    assert got[:18].mean() > 200 and got[22:].mean() < 50  # the white half is now on top


def test_bad_images_are_clear_errors(tmp_path):
    from PIL import Image

    path = _save(Image.fromarray(color_frames(1, 64, 64)[0]), tmp_path / "ok.jpg")
    (tmp_path / "cut.jpg").write_bytes(path.read_bytes()[:200])
    with pytest.raises(audio_io.MediaError, match="cannot decode image"):
        media.load_image(tmp_path / "cut.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(audio_io.MediaError, match=r"empty file \(0 bytes\)"):
        media.load_image(tmp_path / "empty.png")
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 400 megapixels, a few kB on disk
    with pytest.raises(audio_io.MediaError, match="too large"):
        media.load_image(tmp_path / "bomb.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, at open
def test_the_size_guard_reads_the_header_only(tmp_path):
    """196 megapixels is over the stated default (178,956,970 pixels per frame): refused from the
    header, before a pixel is decoded (Pillow alone only warns below twice that, then decodes)."""
    from PIL import Image

    Image.new("1", (14000, 14000)).save(tmp_path / "big.png")  # 196 MP, a few kB on disk
    assert media.MAX_PIXELS_PER_FRAME == 178_956_970
    with pytest.raises(audio_io.MediaError, match=r"image too large: 14000x14000 = 196.0 megapixels, "
                       r"over the "
                       r"limit of 179.0 megapixels per frame \(max_pixels_per_frame"):
        media.load_image(tmp_path / "big.png")
    # a header that promises a large image and holds nothing else: the same answer (nothing decoded)
    ihdr_only = (tmp_path / "big.png").read_bytes()[:33] + (1000).to_bytes(4, "big") + b"IDAT"
    (tmp_path / "header.png").write_bytes(ihdr_only)
    with pytest.raises(audio_io.MediaError, match="too large"):
        media.load_image(tmp_path / "header.png")
    # configurable, for images and video frames alike
    _save(Image.fromarray(color_frames(1, 40, 50)[0]), tmp_path / "small.png")
    assert media.load_image(tmp_path / "small.png", max_pixels=2000).shape == (40, 50, 3)
    with pytest.raises(audio_io.MediaError, match="50x40 = 0.0 megapixels, over the limit"):
        media.load_image(tmp_path / "small.png", max_pixels=1999)
    video = encode_video(tmp_path / "v.mp4", color_frames(4), fps=10)  # 64 x 48
    with pytest.raises(audio_io.MediaError, match="video frames too large: 64x48"):
        media.iter_frames(video, max_pixels=64 * 48 - 1)
    assert sum(len(c) for c in media.iter_frames(video, max_pixels=64 * 48)[1]) == 4


def test_large_frames_come_in_smaller_chunks_with_the_same_frames(tmp_path):
    """Chunks are bounded by pixels as well as frames (memory: FRAME_CHUNK_PIXELS, 16 frames of
    1080p); the frames, their times and their order are the same whatever the chunking."""
    path = encode_video(tmp_path / "v.mp4", color_frames(11), fps=10)
    _, whole = media.iter_frames(path)
    _, bounded = media.iter_frames(path, chunk_pixels=3 * 64 * 48 + 5)
    whole, bounded = list(whole), list(bounded)
    assert [len(c) for c in whole] == [11] and [len(c) for c in bounded] == [3, 3, 3, 2]
    assert np.array_equal(np.concatenate([c.rgb() for c in bounded]), whole[0].rgb())
    assert np.array_equal(np.concatenate([c.pts for c in bounded]), whole[0].pts)
    assert np.concatenate([c.index for c in bounded]).tolist() == list(range(11))
    assert len(list(media.iter_frames(path, chunk_pixels=1)[1])) == 11  # one frame at least


def test_a_symlink_loop_is_left_out_with_why(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    os.symlink("selfloop.wav", tmp_path / "selfloop.wav")
    os.symlink("nowhere.wav", tmp_path / "dangling.wav")
    listing = media.discover(tmp_path)
    assert [p.as_posix() for p in listing.files] == ["a.wav"]
    lines = listing.left_out_lines()
    assert any(line.startswith("selfloop.wav: a symlink loop (") and "left out" in line for line in lines)
    assert any(line.startswith("dangling.wav: a dangling symlink") for line in lines)


def test_a_damaged_file_gets_no_hint_where_its_content_and_name_agree(tmp_path):
    path = encode_video(tmp_path / "v.mp4", color_frames(10), fps=10)
    (tmp_path / "cut.mp4").write_bytes(path.read_bytes()[:200])
    assert audio_io.sniff_hint(tmp_path / "cut.mp4") == ""
    (tmp_path / "cut.m4a").write_bytes(path.read_bytes()[:200])
    assert audio_io.sniff_hint(tmp_path / "cut.m4a") == ""  # MP4 and M4A are one container
    (tmp_path / "mp4.wav").write_bytes(path.read_bytes()[:200])
    hint = audio_io.sniff_hint(tmp_path / "mp4.wav")
    assert hint == "; the file holds an MP4/M4A file (its extension says .wav)"
    with pytest.raises(audio_io.MediaError) as err:
        media.iter_frames(tmp_path / "cut.mp4")
    assert "extension says" not in str(err.value)


def test_random_bytes_named_mp3_are_not_a_decodable_audio_file(tmp_path):
    (tmp_path / "random.mp3").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(audio_io.MediaError) as err:
        audio_io.decode(tmp_path / "random.mp3")
    text = str(err.value)
    assert text.startswith("not a decodable audio file (libsndfile: ") and "; FFmpeg: " in text
    assert str(tmp_path) not in text  # the report names the file already


# -- video frames --------------------------------------------------------------------------------------
def test_frames_stream_in_chunks_with_their_times(tmp_path):
    path = encode_video(tmp_path / "v.mp4", color_frames(23), fps=10)
    info, chunks = media.iter_frames(path, chunk_frames=8)
    assert (info.width, info.height, info.fps, info.frame_count) == (64, 48, 10.0, 23)
    got = list(chunks)
    assert [len(c) for c in got] == [8, 8, 7]
    pts = np.concatenate([c.pts for c in got])
    np.testing.assert_allclose(pts, np.arange(23) / 10, atol=1e-9)
    assert np.concatenate([c.index for c in got]).tolist() == list(range(23))
    levels = np.concatenate([c.rgb().mean(axis=(1, 2, 3)) for c in got])
    np.testing.assert_allclose(levels, 20 + 8 * np.arange(23), atol=3)  # the right frame at the right time
    small = got[0].rgb(select=[0, 3], size=(24, 32), interpolation="bicubic")
    assert (small.shape == (2, 24, 32, 3)
            and got[0].rgb(select=[0, 3], size=(24, 32), interpolation="bicubic") is not small
            and np.array_equal(small, got[0].rgb(select=[0, 3], size=(24, 32), interpolation="bicubic")))


def test_variable_frame_rate_gives_true_times(tmp_path):
    times = [0, 40, 80, 300, 340, 1000, 1033]
    path = encode_video(tmp_path / "vfr.mkv", color_frames(len(times)), fps=25, pts_ms=times)
    _, chunks = media.iter_frames(path)
    pts = np.concatenate([c.pts for c in chunks])
    np.testing.assert_allclose(pts, np.asarray(times) / 1000, atol=1e-3)


def test_broken_videos_are_clear_errors(tmp_path):
    path = encode_video(tmp_path / "v.mp4", color_frames(10), fps=10)
    (tmp_path / "cut.mp4").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(audio_io.MediaError):
        info, chunks = media.iter_frames(tmp_path / "cut.mp4")
        list(chunks)
    m4a = encode_audio(tmp_path / "a.m4a", _signal(48000), 48000, "aac")
    with pytest.raises(audio_io.MediaError, match="no video stream"):
        media.iter_frames(m4a)
