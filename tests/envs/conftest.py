"""Shared fixtures: a small hand-made scene video and a colour probe for decoded frames."""

from types import SimpleNamespace

import numpy as np
import pytest

from streamreason.envs.synthetic import BACKGROUND, COLOURS, SynthObject, write_video


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> SimpleNamespace:
    """An 8 s, 10 fps, 112x112 H.264 MP4: a red square appears at 3 s and moves right until
    it leaves at 6 s; a blue circle stays throughout."""
    s = SimpleNamespace(
        seconds=8,
        fps=10,
        red=SynthObject("red", "square", 3, 6, 36, 30, 30, 70, 30),
        blue=SynthObject("blue", "circle", 0, 8, 36, 40, 85, 60, 85),
        path=tmp_path_factory.mktemp("scene") / "scene.mp4",
    )
    write_video(s.path, [s.red, s.blue], s.seconds, size=112, fps=s.fps)
    return s


def _colour_at(frame: np.ndarray, obj: SynthObject, t: float) -> str:
    x0, y0, x1, y1 = obj.box(t)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    patch = frame[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3).mean(0)
    palette = {**COLOURS, "background": BACKGROUND}
    return min(palette, key=lambda name: np.abs(patch - palette[name]).sum())


@pytest.fixture
def colour_at():
    """``colour_at(frame, obj, t)``: the palette colour (or ``"background"``) nearest to the
    5x5 patch at the centre of ``obj``'s box at ``t`` seconds, in a frame of the scene's size."""
    return _colour_at
