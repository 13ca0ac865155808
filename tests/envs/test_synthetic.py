import re

import pytest

from streamreason.envs.synthetic import COLOURS, MAX_VISIBLE, SHAPES, SynthObject, synthesize
from streamreason.envs.video import FrameReader, probe_video
from streamreason.types import read_rows

N = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), N, seed=7, min_seconds=6, max_seconds=9)


def _objects(row) -> list[SynthObject]:
    return [SynthObject(**d) for d in row.meta["objects"]]


def test_same_seed_same_files(tmp_path, data):
    again = synthesize(tmp_path / "again", N, seed=7, min_seconds=6, max_seconds=9)
    assert again.read_bytes() == data.read_bytes()
    assert [p.read_bytes() for p in sorted((again.parent / "videos").iterdir())] == [
        p.read_bytes() for p in sorted((data.parent / "videos").iterdir())
    ]
    other = synthesize(tmp_path / "other", N, seed=8, min_seconds=6, max_seconds=9)
    assert other.read_bytes() != data.read_bytes()


def test_rows_parse_and_videos_match_their_metadata(data):
    rows, errors = read_rows(data)
    assert errors == [] and len(rows) == N
    assert [r.task for r in rows] == ["event_timing", "state_mc", "counting"] * 2
    for row in rows:
        info = probe_video(row.video_path)
        assert (info.duration_s, info.fps, info.width) == (row.meta["duration_s"], 10.0, 112)
        assert [t.time_s for t in row.thoughts] == list(range(row.meta["duration_s"]))
        assert all(0 <= q.time_s <= q.answer_time_s < info.duration_s for q in row.queries)


def test_answers_follow_from_the_object_track(data):
    rows, _ = read_rows(data)
    for row in rows:
        objects = _objects(row)
        for t in range(row.meta["duration_s"]):
            assert sum(o.visible(t) for o in objects) <= MAX_VISIBLE
        for q in row.queries:
            if row.task == "event_timing":
                colour, shape = re.fullmatch(r"Tell me when a (\w+) (\w+) appears\.", q.text).groups()
                (target,) = [o for o in objects if (o.colour, o.shape) == (colour, shape)]
                assert (q.time_s, q.answer, q.answer_time_s) == (0.0, "yes", target.appear_s)
                assert target.appear_s >= 2
            elif row.task == "state_mc":
                asks_colour = re.match(r"What colour is the (\w+) now\?", q.text)
                if asks_colour:
                    (obj,) = [o for o in objects if o.visible(q.time_s) and o.shape == asks_colour[1]]
                    assert q.answer == "ABCD"[list(COLOURS).index(obj.colour)]
                else:
                    colour = re.match(r"What shape is the (\w+) object now\?", q.text)[1]
                    (obj,) = [o for o in objects if o.visible(q.time_s) and o.colour == colour]
                    assert q.answer == "ABC"[SHAPES.index(obj.shape)]
                assert q.answer_time_s == q.time_s
            else:
                colour, shape = re.fullmatch(r"How many (\w+) (\w+)s have appeared so far\?", q.text).groups()
                count = sum(o.appear_s <= q.time_s for o in objects if (o.colour, o.shape) == (colour, shape))
                assert (q.answer, q.answer_time_s) == (str(count), q.time_s)
        if row.task == "counting":
            assert 2 <= len(row.queries) <= 3 and len({q.text for q in row.queries}) == 1
            assert [q.time_s for q in row.queries] == sorted({q.time_s for q in row.queries})


def test_frames_show_the_track(data, colour_at):
    """Each shape is on screen in its colour from its appearance; 0.1 s (a frame) earlier its
    spot shows the background unless another shape covered it."""
    rows, _ = read_rows(data)
    for row in rows:
        objects = _objects(row)
        with FrameReader(row.video_path, (112, 112)) as reader:
            for o in sorted(objects, key=lambda o: o.appear_s):
                t = o.appear_s
                before, at = reader.read([max(t - 0.1, 0.0), t])
                assert colour_at(at, o, t) == o.colour
                if t > 0 and not any(_covers(p, o, t - 0.1) for p in objects):
                    assert colour_at(before, o, t - 0.1) == "background"


def _covers(p: SynthObject, o: SynthObject, t: float, margin: int = 3) -> bool:
    """``p`` is on screen at ``t`` and its box holds the centre of ``o``'s box."""
    px0, py0, px1, py1 = p.box(t)
    ox0, oy0, ox1, oy1 = o.box(t)
    cx, cy = (ox0 + ox1) // 2, (oy0 + oy1) // 2
    return p.visible(t) and px0 - margin <= cx < px1 + margin and py0 - margin <= cy < py1 + margin
