import io

import av
import numpy as np
import pytest

from streamreason.envs.synthetic import SynthObject, write_video
from streamreason.envs.video import FrameReader, frame_size_for_budget, probe_video
from streamreason.errors import VideoError


def test_probe_mp4(scene):
    info = probe_video(scene.path)
    assert (info.duration_s, info.fps, info.width, info.height) == (8.0, 10.0, 112, 112)


class _Unseekable(io.RawIOBase):
    """A pipe-like sink: a muxer writing to it cannot go back to fill in the duration."""

    def __init__(self, path):
        self.f = open(path, "wb")  # noqa: SIM115 (closed in close())

    def writable(self):
        return True

    def write(self, b):
        return self.f.write(b)

    def close(self):
        self.f.close()
        super().close()


@pytest.mark.parametrize("seekable", [True, False], ids=["container-duration", "decoded-duration"])
def test_probe_duration_without_stream_metadata(tmp_path, seekable):
    """Matroska has no stream duration; written to a pipe it has no container duration either."""
    path = tmp_path / "v.mkv"
    with open(path, "wb") if seekable else _Unseekable(path) as f:
        write_video(f, [], 3, size=64, fps=10, format="matroska")
    with av.open(str(path)) as c:
        assert c.streams.video[0].duration is None
        assert (c.duration is None) == (not seekable)
    assert probe_video(path).duration_s == pytest.approx(3.0)


def test_event_visible_at_its_time_and_not_before(scene, colour_at):
    times = [2.9, 3.0, 3.05, 4.5, 5.9, 6.0]
    with FrameReader(scene.path, (112, 112)) as reader:
        frames = reader.read(times)
    assert frames.shape == (6, 112, 112, 3) and frames.dtype == np.uint8
    seen = [colour_at(f, scene.red, t) for f, t in zip(frames, times, strict=True)]
    assert seen == ["background", "red", "red", "red", "red", "background"]
    assert np.array_equal(frames[1], frames[2])  # 3.05 s falls between frames: still the 3.0 s one
    assert all(colour_at(f, scene.blue, t) == "blue" for f, t in zip(frames, times, strict=True))


def test_reader_seeks_back_and_matches_a_fresh_read(scene):
    times = [0.0, 0.5, 3.0, 7.95]
    with FrameReader(scene.path, (56, 84)) as reader:
        forward = reader.read(times)
        back = reader.read([3.0, 0.0])
    with FrameReader(scene.path, (56, 84)) as fresh:
        assert np.array_equal(fresh.read([3.0]), forward[2:3])
    assert forward.shape == (4, 56, 84, 3)
    assert np.array_equal(back, forward[[2, 0]])


def test_times_before_the_first_frame_show_it(tmp_path):
    """MPEG-TS starts its first frame after 0; times are counted from that frame."""
    path = tmp_path / "v.ts"
    write_video(path, [SynthObject("green", "square", 1, 2, 36, 56, 56, 56, 56)], 2, size=112, fps=10)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).time > 0
    with FrameReader(path, (112, 112)) as reader:
        frames = reader.read([-1.0, 0.95, 1.0])
    assert np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])


@pytest.mark.parametrize("h,w", [(112, 112), (720, 1280), (1080, 1920), (50, 400), (2000, 30)])
def test_frame_size_for_budget(h, w):
    lo, hi = 128 * 28 * 28, 192 * 28 * 28
    fh, fw = frame_size_for_budget(h, w, lo, hi)
    assert fh % 28 == 0 and fw % 28 == 0
    assert lo <= fh * fw <= hi
    assert fh / fw == pytest.approx(h / w, rel=0.35)


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _audio_only(path):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _no_video_frames(path):
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width = video.height = 64
        audio = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(audio.encode(frame))
        out.mux(audio.encode())


def _raw_h264(path):
    write_video(path, [], 1, size=64, fps=10, format="h264")


@pytest.mark.parametrize(
    "name,make,reason",
    [
        ("missing.mp4", None, "file not found"),
        ("garbage.mp4", _garbage, "not a readable video"),
        ("audio.wav", _audio_only, "no video stream"),
        ("silent.mkv", _no_video_frames, "no decodable video frames"),
        ("raw.h264", _raw_h264, "no timestamps"),
    ],
)
def test_bad_video_raises_video_error_naming_the_file(tmp_path, name, make, reason):
    path = tmp_path / name
    if make:
        make(path)
    for open_it in (probe_video, lambda p: FrameReader(p, (28, 28))):
        with pytest.raises(VideoError, match=reason) as e:
            open_it(path)
        assert e.value.path == str(path) and str(path) in str(e.value)
