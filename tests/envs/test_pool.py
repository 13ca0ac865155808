import numpy as np
import pytest

from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.envs.synthetic import SynthObject, write_video
from streamreason.errors import VideoError
from streamreason.types import Query, StreamRow

CFG = EnvConfig(min_pixels=112 * 112, max_pixels=112 * 112)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Two good rows (5 s and 3 s videos) and one whose video does not exist."""
    d = tmp_path_factory.mktemp("pool")
    write_video(d / "a.mp4", [SynthObject("red", "square", 2, 4, 36, 40, 40, 70, 40)], 5, size=112)
    write_video(d / "b.mp4", [SynthObject("blue", "circle", 1, 3, 36, 70, 70, 40, 70)], 3, size=112)
    return [
        StreamRow("a", str(d / "a.mp4"), [Query("q", 2.0)]),
        StreamRow("b", str(d / "b.mp4"), [Query("q", 0.0)]),
        StreamRow("bad", str(d / "missing.mp4"), [Query("q", 0.0)]),
    ]


def _lockstep(pool, rows, copies):
    """Reset and step every env with valid video in lockstep to its end.

    Returns the ids, the reset results, and per step the results of the envs still running."""
    groups = pool.make(rows, copies=copies)
    ids = [i for g in groups for i in g]
    resets = pool.reset(ids)
    live = [i for i, r in zip(ids, resets, strict=True) if not isinstance(r, VideoError)]
    steps = []
    while live:
        results = dict(zip(live, pool.step(live, [f"act{i}" for i in live]), strict=True))
        steps.append(results)
        live = [i for i in live if not (results[i][2] or results[i][3])]
    return groups, resets, steps


def test_in_process_copies_share_frames(rows):
    with EnvPool(CFG, num_workers=2, in_process=True) as pool:
        groups, resets, steps = _lockstep(pool, rows[:2], copies=3)
    for group in groups:
        first = resets[group[0]][0]["frames"]
        assert all(resets[i][0]["frames"] is first for i in group[1:])
    for results in steps:
        for group in groups:
            frames = [results[i][0]["frames"] for i in group if i in results and not results[i][2]]
            assert all(f is frames[0] for f in frames)


def test_ray_pool_matches_in_process_and_isolates_a_bad_row(ray_cluster, rows):
    with EnvPool(CFG, num_workers=2) as remote, EnvPool(CFG, num_workers=2, in_process=True) as local:
        got = _lockstep(remote, rows, copies=2)
        want = _lockstep(local, rows, copies=2)
    (groups, resets, steps), (_, want_resets, want_steps) = got, want
    assert groups == [[0, 1], [2, 3], [4, 5]]
    # the bad row's copies are VideoError entries naming its file; the good rows ran to their end
    assert all(isinstance(resets[i], VideoError) and resets[i].path == rows[2].video_path for i in (4, 5))
    assert [len(s) for s in steps] == [4] * 3 + [2] * 2  # b ends after 3 chunks, a after 5
    assert all(steps[-1][i][2] for i in (0, 1))
    for r, w in zip(resets[:4], want_resets[:4], strict=True):
        _assert_same_obs(r[0], w[0])
        assert r[1] == w[1]
    for s, w in zip(steps, want_steps, strict=True):
        assert s.keys() == w.keys()
        for i in s:
            _assert_same_obs(s[i][0], w[i][0])
            assert s[i][1:] == w[i][1:]
    # Ray pickles each worker's batch once: copies of a row get one array, not two
    assert resets[0][0]["frames"] is resets[1][0]["frames"]
    assert steps[0][2][0]["frames"] is steps[0][3][0]["frames"]


def _assert_same_obs(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k]


def test_a_killed_worker_is_restarted_and_its_envs_replayed(ray_cluster, rows):
    """A worker killed between steps (and again right after its restart) comes back with
    every env at the chunk it was at: the results equal an undisturbed in-process run."""
    with EnvPool(CFG, num_workers=2, in_process=True) as local:
        _, want_resets, want_steps = _lockstep(local, rows[:2], copies=2)
    with EnvPool(CFG, num_workers=2) as pool:
        ids = [i for g in pool.make(rows[:2], copies=2) for i in g]
        resets = pool.reset(ids)
        for r, w in zip(resets, want_resets, strict=True):
            _assert_same_obs(r[0], w[0])
        live, k = list(ids), 0
        while live:
            if k in (1, 3):
                pool.kill_worker(0)  # worker 0 holds row a's copies (ids 0, 1)
            results = dict(zip(live, pool.step(live, [f"act{i}" for i in live]), strict=True))
            assert results.keys() == want_steps[k].keys()
            for i in results:
                _assert_same_obs(results[i][0], want_steps[k][i][0])
                assert results[i][1:] == want_steps[k][i][1:]
            live = [i for i in live if not (results[i][2] or results[i][3])]
            k += 1
        assert k == len(want_steps) and pool.restarts == 2
