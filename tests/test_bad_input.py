"""Property tests (hypothesis): no input raises anything but the project's documented errors
(:mod:`streamreason.errors`), and each names the file, row or key.

Entry points: the turn parser, the composite reward (built-in and custom rewards), answer
parsing, dataset rows, the dataset converters and the config loader. Strategies mix arbitrary
values with near-valid ones (protocol tags, real recipe keys, annotation entries of the real
benchmark files with a key dropped or a value replaced) so that hypothesis gets past the
top-level checks.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import string
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import streamreason.recipes
from streamreason.answers import KINDS, answer_kind, answers_match, parse_answer
from streamreason.config import StreamReasonConfig, load_config
from streamreason.envs.convert import convert, read_json, read_source
from streamreason.errors import ConfigError, RewardError, RowError
from streamreason.evals import FORMATS  # the benchmarks register their converters on import
from streamreason.rewards.composite import CompositeReward, RewardConfig, RewardResult
from streamreason.rewards.registry import list_rewards
from streamreason.rollout.protocol import ParsedTurn, get_protocol
from streamreason.schema import valid_keys
from streamreason.types import Episode, Query, StreamRow, TurnOutcome, read_rows

CHEAP = settings(max_examples=400, deadline=None)  # pure functions of one string
FAST = settings(max_examples=120, deadline=None)
SLOW = settings(max_examples=50, deadline=None)  # examples that write files or build configs

# ---------------------------------------------------------------- shared strategies

# Values that broke the project's parsers: huge ints (float overflow, the int digit limit),
# non-finite floats, NUL, lone surrogates, names too long for a file system, time-like strings.
SPECIAL = st.sampled_from([
    10**400, -(10**400), -1, 0, -0.5, 1e308, math.inf, -math.inf, math.nan, True, False, "", " ", "\x00",
    "a\x00b.mp4", "\ud800", "x" * 300, "00:00:05", "-5", "1:2:3:4", "nan", "inf", "1e400", "A", "yes", "3",
])  # fmt: skip
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), SPECIAL)
JSON = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


@st.composite
def mostly(draw, valid: st.SearchStrategy, *odd: st.SearchStrategy, one_in: int = 4):
    """``valid``, except one time in ``one_in`` one of ``odd`` (shrinks towards ``valid``)."""
    return draw(valid if draw(st.integers(1, one_in)) < one_in else st.one_of(odd))


ODD_NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, -1, -0.5, 0, 10**400, 1e308, True])
ODD_STRINGS = st.sampled_from(
    ["", " ", "\x00", "\ud800", "x" * 300, "-5", "nan", "00:-1", "9" * 400]
) | st.text(max_size=8)


def _odd_like(value) -> st.SearchStrategy:
    """Values of ``value``'s type that are odd for it: NaN, inf, negative, huge; empty, NUL, a
    lone surrogate, too long; a list of the same length with items of another type."""
    if isinstance(value, bool | int | float):
        return ODD_NUMBERS
    if isinstance(value, str):
        return ODD_STRINGS
    if isinstance(value, list):
        return st.just([]) | st.lists(SCALARS, min_size=len(value), max_size=len(value))
    return st.just({}) | st.none()


def _pick_key(draw, d: dict):
    return draw(st.sampled_from(sorted(d, key=repr)))


def _edit(draw, value, depth: int = 0):
    """``value`` with one edit at a random depth: a key dropped or added, a list item dropped
    or repeated, or a value replaced by an arbitrary JSON value (often of the wrong type)."""
    descend = depth < 4 and draw(st.integers(0, 3)) > 0  # mostly deep: get past the top-level checks
    if isinstance(value, dict) and value and descend:
        key = _pick_key(draw, value)
        value[key] = _edit(draw, value[key], depth + 1)
        return value
    if isinstance(value, list) and value and descend:
        i = draw(st.integers(0, len(value) - 1))
        value[i] = _edit(draw, value[i], depth + 1)
        return value
    op = draw(st.sampled_from(["replace", "drop", "add"]))
    if op == "drop" and isinstance(value, dict) and value:
        del value[_pick_key(draw, value)]
    elif op == "drop" and isinstance(value, list) and value:
        del value[draw(st.integers(0, len(value) - 1))]
    elif op == "add" and isinstance(value, dict):
        value[draw(st.text(max_size=6) | st.sampled_from(sorted(value, key=repr) or ["x"]))] = draw(JSON)
    elif op == "add" and isinstance(value, list):
        value.append(copy.deepcopy(value[-1]) if value and draw(st.booleans()) else draw(JSON))
    else:
        return draw(mostly(_odd_like(value), JSON))
    return value


def mutated(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A value of ``valid`` with one to three edits (see :func:`_edit`)."""

    @st.composite
    def go(draw):
        value = copy.deepcopy(draw(valid))
        for _ in range(draw(mostly(st.just(1), st.integers(2, 3)))):
            value = _edit(draw, value)
        return value

    return go()


def near_valid(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly ``valid`` values with a few edits, sometimes intact ones or arbitrary JSON."""
    return mostly(mutated(valid), valid, JSON)


def no_newlines(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


@contextlib.contextmanager
def written(data: bytes, suffix: str) -> Iterator[Path]:
    """``data`` as the file ``src<suffix>`` in a fresh folder, removed afterwards (hypothesis
    runs many examples per test, so tmp_path, one per test, does not do)."""
    with tempfile.TemporaryDirectory(prefix="bad_input_") as d:
        path = Path(d) / f"src{suffix}"
        path.write_bytes(data)
        yield path


# ---------------------------------------------------------------- the turn parser

TAGS = ["<think>", "</think>", "<response>", "<silent>", "<standby>", "<end>"]
ACTIONS = {"watch_think_speak": {"response", "silent", "invalid"},
           "streamo": {"response", "silent", "standby", "invalid"}}  # fmt: skip
WS = st.sampled_from(["", "", " ", "\n", "\t "])
# a turn of the protocols' shape, [ws] [<think> text </think>] [ws] action [text] [ws], each part
# possibly dropped or doubled; then arbitrary sequences of tags and text
SHAPED_TURNS = st.tuples(
    WS, st.sampled_from(["<think>", "", "<think><think>"]), st.text(max_size=4),
    st.sampled_from(["</think>", "", "</think></think>"]), WS,
    st.sampled_from(["<response>", "<silent>", "<standby>", "", "<silent><silent>", "<response><response>"]),
    st.text(max_size=4) | WS, WS,
).map("".join)  # fmt: skip
NEAR_TURNS = SHAPED_TURNS | st.lists(
    st.sampled_from([*TAGS, " ", "\n", "<", ">", "<think", "response>"]) | st.text(max_size=5), max_size=8
).map("".join)


@CHEAP
@given(name=st.sampled_from(sorted(ACTIONS)), text=NEAR_TURNS | st.text(), ended=st.booleans())
@example(name="watch_think_speak", text="<think>a</think> <silent>", ended=True)
def test_parse_never_raises_and_says_what_is_wrong(name, text, ended):
    turn = get_protocol(name).parse(text, ended)
    assert isinstance(turn, ParsedTurn) and turn.action in ACTIONS[name]
    assert all(isinstance(e, str) and e for e in turn.errors)
    # format_ok iff nothing is wrong: an ok turn has no errors, a bad one says why
    assert turn.format_ok == (not turn.errors), turn
    if turn.format_ok:
        assert ended and turn.action != "invalid"
    if turn.action == "response":
        assert isinstance(turn.response, str) and turn.response == turn.response.strip()
    else:
        assert turn.response is None
    assert turn.think is None or turn.think == turn.think.strip()


def _tag_free(text: str) -> bool:
    return not any(t in text for t in TAGS)


STRIPPED = st.text(max_size=12).map(str.strip).filter(_tag_free)


@st.composite
def renderable(draw):
    """``(protocol, think, action, response)`` that :meth:`Protocol.render` turns into a
    well-formed turn: tag-free, stripped text (parse strips both spans); watch_think_speak
    needs a think span; a response is not empty."""
    name = draw(st.sampled_from(sorted(ACTIONS)))
    action = draw(st.sampled_from(sorted(ACTIONS[name] - {"invalid"})))
    think = draw(STRIPPED if name == "watch_think_speak" else st.none() | STRIPPED)
    response = draw(STRIPPED.filter(bool)) if action == "response" else None
    return name, think, action, response


@FAST
@given(renderable())
def test_render_parses_back(args):
    name, think, action, response = args
    protocol = get_protocol(name)
    turn = protocol.parse(protocol.render(think, action, response), ended=True)
    assert turn == ParsedTurn(action, think, response, True, ())


# ---------------------------------------------------------------- rewards

TIMES = st.one_of(st.floats(0, 60, allow_nan=False), st.floats(allow_nan=False))
ANSWERS = st.one_of(
    st.none(), st.sampled_from(["A", "(b)", "C. red", "yes", "No.", "3", "-2.5", "two", "red square", ""]),
    st.text(max_size=10),
)  # fmt: skip
TURNS = st.builds(
    TurnOutcome,
    chunk_index=st.integers(-2, 40) | st.integers(),
    start_s=TIMES,
    end_s=TIMES,
    action=st.sampled_from(["response", "silent", "standby", "invalid"]),
    think=st.none() | st.text(max_size=10),
    think_tokens=st.integers(0, 40) | st.integers(),
    response=ANSWERS,
    format_ok=st.booleans(),
)
QUERIES = st.builds(
    Query, text=st.text(max_size=10), time_s=TIMES, answer=ANSWERS, answer_time_s=st.none() | TIMES
)
EPISODES = st.builds(
    Episode,
    row_id=st.text(max_size=12),
    chunk_seconds=st.sampled_from([0.5, 1.0, 2.0]) | st.floats(allow_nan=False),
    queries=st.lists(QUERIES, max_size=4),
    turns=st.lists(TURNS, max_size=8),
    n_chunks=st.none() | st.integers(-1, 50),
)
WEIGHTS = st.fixed_dictionaries({name: st.floats(-10, 10) for name in list_rewards()})


def _assert_names_reward_and_row(e: RewardError, reward: str, row_id: str) -> None:
    assert (e.reward, e.row_id) == (reward, row_id)
    # names are quoted with repr, so that an id with spaces or control characters stays readable
    assert repr(reward) in str(e) and repr(row_id) in str(e)


@FAST
@given(episode=EPISODES, weights=WEIGHTS)
def test_builtin_rewards_give_a_finite_total_or_a_reward_error(episode, weights):
    try:
        result = CompositeReward(RewardConfig(weights=weights, on_error="raise"))(episode)
    except RewardError as e:
        assert e.reward in weights
        _assert_names_reward_and_row(e, e.reward, episode.row_id)
        skipped = CompositeReward(RewardConfig(weights=weights, on_error="skip"))(episode)
        assert not skipped.ok and math.isnan(skipped.total) and skipped.components == {}
        assert skipped.error == str(e)
        return
    assert isinstance(result, RewardResult) and result.ok and result.error is None
    assert math.isfinite(result.total) and set(result.components) == set(weights)
    assert result.total == pytest.approx(sum(w * result.components[n] for n, w in weights.items()))
    if episode.chunk_seconds > 0 and all(t.think_tokens >= 0 for t in episode.turns):
        # "every built-in returns a float in [0, 1]" (on episodes a rollout can produce)
        assert all(0 <= v <= 1 for v in result.components.values()), result.components
    assert CompositeReward(RewardConfig(weights=weights, on_error="skip"))(episode) == result


class _Unprintable:
    def __repr__(self):
        raise RuntimeError("no repr")

    __str__ = __repr__


class _BadMessage(Exception):
    def __str__(self):
        raise RuntimeError("no message")


class Lazy:
    """A value made when the reward runs (hypothesis cannot print an int over the digit limit)."""

    def __init__(self, make, text: str):
        self.make, self.text = make, text

    def __repr__(self):
        return self.text


HUGE = Lazy(lambda: 10**5000, "10**5000")  # str() and repr() of it raise ValueError
EXCEPTION_TYPES = [ValueError, KeyError, TypeError, RuntimeError, ZeroDivisionError, AttributeError, IndexError,
                   OSError, StopIteration, RecursionError, AssertionError, _BadMessage, ConfigError]  # fmt: skip
EXCEPTIONS = st.builds(
    lambda cls, arg: Lazy(
        lambda: cls(arg.make() if isinstance(arg, Lazy) else arg), f"{cls.__name__}({arg!r})"
    ),
    st.sampled_from(EXCEPTION_TYPES),
    st.text(max_size=8) | st.integers() | st.just(HUGE),
) | st.just(Lazy(lambda: RewardError("other", "row", "inner"), "RewardError('other', 'row', 'inner')"))
FINITE = st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6) | st.booleans()
RETURNS = st.one_of(
    FINITE,
    st.none(), st.text(max_size=5), st.floats(), st.integers(), st.just(10**400), st.just(HUGE),
    st.just(Fraction(10**400, 3)), st.just(complex(1, 2)), st.just(_Unprintable()),
    st.lists(FINITE, max_size=3),
    st.dictionaries(st.text(max_size=4) | st.integers(), FINITE | st.floats() | st.text(max_size=3), max_size=3),
    st.builds(lambda score, extra: {"score": score, **extra}, FINITE | SCALARS,
              st.dictionaries(st.text(max_size=4) | st.integers(), FINITE | SCALARS, max_size=2)),
)  # fmt: skip


def _finite_number(v) -> bool:
    if isinstance(v, int | float):  # bool included
        try:
            return math.isfinite(float(v))
        except OverflowError:
            return False
    return False


CUSTOM = """
def reward(episode):
    if "raise" in episode.meta:
        raise episode.meta["raise"].make()
    value = episode.meta["value"]
    return value.make() if hasattr(value, "make") else value
"""


@pytest.fixture(scope="module")
def custom_spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("custom") / "my_reward.py"
    path.write_text(CUSTOM)
    return f"{path}:reward"


@FAST
@given(value=RETURNS, error=st.none() | EXCEPTIONS, row_id=st.text(max_size=10))
@example(value={1: 1.0, "a": 2.0}, error=None, row_id="r")  # a dict without "score", keys unsortable
@example(value=10**400, error=None, row_id="r")  # math.isfinite overflows
def test_a_custom_reward_fails_only_with_a_reward_error(custom_spec, value, error, row_id):
    meta = {"value": value} if error is None else {"raise": error}
    value = value.make() if isinstance(value, Lazy) else value
    episode = Episode(row_id, 1.0, [], [TurnOutcome(0, 0.0, 1.0, "silent", format_ok=True)], meta=meta)
    cfg = {"weights": {"format": 0.5, "mine": 0.5}, "custom": {"mine": custom_spec}}
    expect_ok = error is None and (
        _finite_number(value)
        or isinstance(value, dict)
        and "score" in value
        and all(_finite_number(v) for v in value.values())
    )
    try:
        result = CompositeReward(RewardConfig(**cfg, on_error="raise"))(episode)
    except RewardError as e:
        assert not expect_ok, e
        _assert_names_reward_and_row(e, "mine", row_id)
    else:
        assert expect_ok and result.ok and math.isfinite(result.total)
        score = value["score"] if isinstance(value, dict) else value
        assert result.components["mine"] == float(score)
    skipped = CompositeReward(RewardConfig(**cfg, on_error="skip"))(episode)
    assert skipped.ok == expect_ok
    if not expect_ok:
        assert math.isnan(skipped.total) and repr("mine") in skipped.error and repr(row_id) in skipped.error


LITERALS = st.sampled_from(["A", "(b)", "c)", "D.", "e: x", "yes", "N", "no!", "3", "-0.5", "+.5", "twenty",
                            "1" * 400, "0." + "0" * 400 + "1", "٣", "the cat", "a", "", "  "])  # fmt: skip


@CHEAP
@given(text=st.none() | st.text() | LITERALS, kind=st.sampled_from(KINDS), gt=st.text() | LITERALS)
@example(text="1" * 400, kind="number", gt="2" * 400)  # both overflow to inf
def test_answers_never_raise(text, kind, gt):
    out = parse_answer(text, kind)
    assert out is None or (isinstance(out, str) and out)
    if out is not None and kind == "number":
        assert math.isfinite(float(out)), out  # a number, not an overflow
    assert answer_kind(gt) in KINDS
    assert isinstance(answers_match(text, gt), bool)
    if answers_match(text, gt):
        assert parse_answer(text, answer_kind(gt)) == parse_answer(gt, answer_kind(gt)) is not None


# ---------------------------------------------------------------- dataset rows

TIMESTAMPS = (
    st.floats(0, 1e4)
    | st.integers(0, 10**4)
    | st.builds(
        lambda h, m, s: f"{h:02d}:{m:02d}:{s:06.3f}",
        st.integers(0, 9),
        st.integers(0, 59),
        st.floats(0, 59.9),
    )
)


@st.composite
def valid_rows(draw, sft: bool = False) -> dict:
    """A row in ThinkStream's RL format (types.py's module docstring), or SFT (with thoughts)."""
    convs = []
    for _ in range(draw(st.integers(1, 3))):
        convs.append({"role": "user", "content": draw(st.text(max_size=10)), "timestamp": draw(TIMESTAMPS)})
        if draw(st.booleans()):
            convs.append(
                {"role": "assistant", "content": draw(ANSWERS.filter(bool)), "timestamp": draw(TIMESTAMPS)}
            )
    row = {
        "video_path": draw(st.sampled_from(["videos/a.mp4", "/abs/b.mp4", "./c d.mp4"])),
        "conversations": convs,
    }
    if draw(st.booleans()):
        row["id"] = draw(st.text(max_size=8))
    if sft or draw(st.booleans()):
        row["thoughts"] = [{"timestamp": draw(TIMESTAMPS), "think": draw(st.text(max_size=8))}
                           for _ in range(draw(st.integers(1, 2)))]  # fmt: skip
    if draw(st.booleans()):
        row["task"] = draw(st.text(max_size=8))
    if draw(st.booleans()):
        row["video_end"] = draw(st.floats(0.5, 1e4))
    if draw(st.booleans()):
        row["interaction_mode"] = draw(st.text(max_size=8) | JSON)
    return row


@FAST
@given(d=near_valid(valid_rows()), where=st.text(min_size=1, max_size=20))
@example(d={"video_path": "v.mp4", "conversations": [{"role": "user", "content": "q", "timestamp": 0}],
            "thoughts": 3}, where="f.jsonl:1")  # fmt: skip
@example(d={"video_path": "v.mp4", "conversations": [{"role": "user", "content": "q", "timestamp": 10**400}]},
         where="f.jsonl:2")  # fmt: skip
def test_row_from_dict_raises_only_row_errors_naming_the_row(d, where):
    try:
        row = StreamRow.from_dict(d, where, base_dir="/data")
    except RowError as e:
        assert e.where == where and where in str(e)
        return
    for q in row.queries:
        assert 0 <= q.time_s < math.inf and (
            q.answer_time_s is None or q.time_s <= q.answer_time_s < math.inf
        )
    assert row.task is None or isinstance(row.task, str)
    # to_dict is the inverse of from_dict: what from_dict accepts, it writes back readably
    # (compared as JSON: a NaN in meta is not equal to itself)
    again = StreamRow.from_dict(json.loads(json.dumps(row.to_dict())), "again")
    assert json.dumps(again.to_dict()) == json.dumps(row.to_dict())


def _line_bytes(kind_and_value) -> bytes:
    kind, value = kind_and_value
    if kind == "bytes":
        return value.replace(b"\n", b" ").replace(b"\r", b" ")
    if kind == "text":
        return no_newlines(value).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()  # a row, a mutated row, any JSON value


def jsonl_lines(rows: st.SearchStrategy) -> st.SearchStrategy:
    """Lines of a JSONL file as ``(kind, value)``: good rows, edited rows and JSON of any shape,
    text, and bytes that are not UTF-8."""
    return st.lists(
        mostly(st.tuples(st.just("row"), rows) | st.tuples(st.just("json"), near_valid(rows)),
               st.tuples(st.just("text"), st.text(max_size=20) | st.sampled_from(["", "  ", "{", "[1,", "\ud800x"])),
               st.tuples(st.just("bytes"), st.binary(max_size=20) | st.sampled_from([b"\xff\xfe", b'{"a": "\xe9"}']))),
        max_size=8,
    )  # fmt: skip


LINES = jsonl_lines(valid_rows())


@settings(SLOW, max_examples=80)
@given(lines=LINES)
@example(lines=[("text", "9" * 5000), ("text", "[" * 100000), ("row", {"video_path": "v", "conversations": [
    {"role": "user", "content": "q", "timestamp": 0}]})])  # fmt: skip
def test_read_rows_reports_each_bad_line_by_file_and_line(lines):
    with written(b"\n".join(_line_bytes(x) for x in lines), ".jsonl") as path:
        rows, errors = read_rows(path)
    texts = [_line_bytes(x).decode("utf-8", "surrogateescape") for x in lines]
    non_blank = {i for i, t in enumerate(texts, 1) if t.strip()}
    assert len(rows) + len(errors) == len(non_blank)
    where = [e.where for e in errors]
    assert len(set(where)) == len(where) and all(
        isinstance(e, RowError) and e.where in str(e) for e in errors
    )
    assert set(where) <= {f"{path}:{i}" for i in non_blank}
    planted = {f"{path}:{i}" for i, (kind, _) in enumerate(lines, 1) if kind == "row"}
    assert not planted & set(where), [str(e) for e in errors if e.where in planted]


# ---------------------------------------------------------------- converters

# Entries as in the real files (../shared/data) and the converters' tests.
OVO_ENTRIES = [
    {"id": 0, "task": "EPM", "video": "Ego4D/clips/ec4a.mp4", "realtime": 215, "question": "Who did I talk to?",
     "answer": "a person", "options": ["brown shirt", "green shirt", "blue shirt", "white shirt"], "gt": 2},
    {"id": 297, "task": "HLD", "video": "Ego4D/clips/9323.mp4", "question": "what did I put in the bin?",
     "answer": "Unable to answer", "options": ["bottles", "Unable to answer", "newspapers", "scraps"], "gt": 1,
     "realtime": 371},
    {"id": 1319, "task": "OCR", "video": "AutoEvalMetaData/106.mp4", "realtime": 54.2, "question": "Names?",
     "answer": "Rapsys, Di Cola", "options": ["Rapsys, Di Cola", "Leclos, Seto", "Fraser, Meyer", "Lochte, Cseh"],
     "gt": 0},
    {"id": 1109, "task": "FPD", "video": "Ego4D/video/005e.mp4", "realtime": 88.43, "question": "What next?",
     "answer": "drill", "options": ["plant", "drill", "paint", "change"], "gt": 1},
    {"id": 1468, "task": "CRR", "video": "MovieNet/tt0048028.mp4", "question": "What does she do?",
     "answer": "walks past", "ask_time": 297, "clue_time": 308,
     "test_info": [{"realtime": 297, "type": 0}, {"realtime": 302.5, "type": 0}, {"realtime": 310, "type": 1}]},
    {"id": 1516, "task": "SSR", "video": "COIN/xZecGPPhbHE.mp4", "tutorial": "PutOnHairExtensions",
     "test_info": [{"realtime": 27, "step": "pull up the hair", "type": 1},
                   {"realtime": 27.5, "step": "put on the extensions", "type": 0}]},
    {"id": 1558, "task": "REC", "video": "perception_test/video_4017.mp4", "activity": "breaking something",
     "test_info": [{"realtime": 17, "count": 1}, {"realtime": 32.0, "count": 2}]},
]  # fmt: skip
SB_REAL = {"time": "[0:00:00 - 0:00:10]", "video_path": "./videos/sample_348_real.mp4", "questions": [
    {"task_type": "Clips Summarize", "question": "What did they do?", "time_stamp": "00:00:31", "answer": "C",
     "options": ["A. a", "B. b", "C. c", "D. d"], "required_ability": "episodic memory"},
    {"task_type": "Counting", "question": "How many?", "time_stamp": "01:02", "answer": "A",
     "options": ["one", "two", "three", "four"]}]}  # fmt: skip
SB_PROACTIVE = {"time": "[0:00:00 - 0:00:30]", "video_path": "./videos/sample_17_proactive.mp4", "questions": [
    {"task_type": "Proactive Output", "question": 'When it shows 3, output "3".', "time_stamp": "00:00:20",
     "ground_truth_time_stamp": "00:00:29", "ground_truth_output": "3"}]}  # fmt: skip
VST_SCHEMA = pa.schema([
    ("data_source", pa.string()), ("prompt", pa.string()), ("video_context", pa.string()),
    ("reward_model", pa.struct([("ground_truth", pa.list_(pa.string())), ("style", pa.string())])),
    ("extra_info", pa.struct([("duration", pa.float64()), ("origin_id", pa.string()), ("index", pa.int64())])),
])  # fmt: skip


def _entry_lists(entries: list) -> st.SearchStrategy:
    return mostly(st.lists(near_valid(st.sampled_from(entries)), min_size=1, max_size=5), JSON)


def _json_text(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return strategy.map(lambda v: (json.dumps(v).encode(), "json", len(v) if isinstance(v, list) else None))


OPT_TEXT = st.none() | st.text(max_size=8)
# each field valid (as in the converters' tests) but one time in eight missing or odd
VST_FIELDS = {
    "data_source": mostly(st.sampled_from(["multiple choice", "yes or no", "numerical"]),
                          st.none() | st.text(max_size=5), one_in=8),
    "prompt": mostly(st.just("Which?\nA. cat\nB. dog\nOutput the final answer in \\boxed{}."), OPT_TEXT, one_in=8),
    "video_context": mostly(st.sampled_from(["LLaVA/x.mp4", "/abs/y.mp4"]), OPT_TEXT,
                            st.sampled_from(["a\x00b", "y" * 300]), one_in=8),
    "reward_model": mostly(st.fixed_dictionaries({
        "ground_truth": mostly(st.lists(LITERALS, min_size=1, max_size=2), st.none(),
                               st.lists(st.none() | st.text(max_size=4), max_size=2), one_in=8),
        "style": OPT_TEXT}), st.none(), one_in=8),
    "extra_info": mostly(st.fixed_dictionaries({
        "duration": mostly(st.floats(0.1, 1e4), st.none() | st.floats(), one_in=8), "origin_id": OPT_TEXT,
        "index": st.none() | st.integers(-(2**63), 2**63 - 1)}), st.none(), one_in=8),
}  # fmt: skip
VST_ROWS = st.fixed_dictionaries(VST_FIELDS)
# columns of any name and type, for parquet files of the wrong shape
ARROW_COLUMNS = {
    "string": (pa.string(), OPT_TEXT),
    "int": (pa.int64(), st.none() | st.integers(-(2**63), 2**63 - 1)),
    "float": (pa.float64(), st.none() | st.floats()),
    "bool": (pa.bool_(), st.none() | st.booleans()),
    "binary": (pa.binary(), st.none() | st.binary(max_size=6)),
    "list": (pa.list_(pa.string()), st.none() | st.lists(OPT_TEXT, max_size=3)),
    "struct": (pa.struct([("duration", pa.string()), ("ground_truth", pa.int64())]),
               st.none() | st.fixed_dictionaries({"duration": OPT_TEXT, "ground_truth": st.none() | st.integers(0, 9)})),
}  # fmt: skip


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@st.composite
def edited_tables(draw) -> tuple[bytes, int]:
    """A VST table with columns dropped, of another type, or added."""
    n = draw(st.integers(0, 4))
    cols = {}
    for name in VST_SCHEMA.names:
        if draw(st.integers(1, 8)) == 8:
            continue  # dropped
        if draw(st.integers(1, 3)) < 3:
            typ, values = VST_SCHEMA.field(name).type, VST_FIELDS[name]
        else:
            typ, values = ARROW_COLUMNS[draw(st.sampled_from(sorted(ARROW_COLUMNS)))]
        cols[name] = pa.array(draw(st.lists(values, min_size=n, max_size=n)), type=typ)
    for name in draw(st.lists(st.text(min_size=1, max_size=5), max_size=2)):
        typ, values = ARROW_COLUMNS[draw(st.sampled_from(sorted(ARROW_COLUMNS)))]
        cols.setdefault(name, pa.array(draw(st.lists(values, min_size=n, max_size=n)), type=typ))
    return _parquet(pa.table(cols)), n if cols else 0


VST_FILES = st.one_of(
    st.lists(VST_ROWS, min_size=1, max_size=5).map(lambda rows: (_parquet(pa.Table.from_pylist(rows, schema=VST_SCHEMA)), len(rows))),
    edited_tables(),
).map(lambda got: (got[0], "parquet", got[1]))  # fmt: skip


def _jsonl(lines: list) -> tuple[bytes, str, int]:
    texts = [_line_bytes(x) for x in lines]
    return b"\n".join(texts), "jsonl", sum(bool(t.decode("utf-8", "surrogateescape").strip()) for t in texts)


ANY_BYTES = st.tuples(st.binary(max_size=40) | st.text(max_size=40).map(str.encode), st.none(), st.none())
FAMILY = {"thinkstream": "jsonl", "thinkstream-sft": "jsonl", "vst": "parquet"}  # the rest: "json"
CONTENT = {
    "thinkstream": LINES.map(_jsonl),
    "thinkstream-sft": jsonl_lines(valid_rows(sft=True)).map(_jsonl),
    "vst": VST_FILES,
    "ovo": _json_text(_entry_lists(OVO_ENTRIES)),
    "streamingbench-real": _json_text(_entry_lists([SB_REAL, SB_PROACTIVE])),
    "streamingbench-proactive": _json_text(_entry_lists([SB_PROACTIVE, SB_REAL])),
}


def _check_convert(fmt: str, content: bytes, family: str | None = None, entries: int | None = None) -> None:
    """``convert`` raises only a RowError naming the file, reports each bad entry by its
    locator, and writes rows that ``read_rows`` reads back whole."""
    with written(content, ".parquet" if fmt == "vst" else ".json") as src:
        _check_convert_file(fmt, src, family, entries)


def _check_convert_file(fmt: str, src: Path, family: str | None, entries: int | None) -> None:
    out = src.parent / "out" / "rows.jsonl"
    try:
        report = convert(fmt, src, out, video_root=src.parent / "videos")
    except RowError as e:  # the file as a whole: not JSON / parquet / a list
        assert e.where == src.name and src.name in str(e)
        return
    if family == FAMILY.get(fmt, "json") and entries is not None:
        assert report.entries == entries
    assert len(report.errors) <= report.entries
    for e in report.errors:
        assert isinstance(e, RowError) and e.where.startswith(src.name) and e.where in str(e)
    assert len({e.where for e in report.errors}) == len(report.errors)
    rows, bad = read_rows(out)
    assert not bad, [str(e) for e in bad]
    assert len(rows) == len(report.rows)
    if report.errors:
        assert len((src.parent / "out" / "rows.jsonl.errors.txt").read_text().splitlines()) >= len(
            report.errors
        )


@pytest.mark.parametrize("fmt", FORMATS)
@settings(SLOW, max_examples=80)
@given(data=st.data())
def test_converters_raise_only_row_errors_and_write_readable_rows(fmt, data):
    # mostly this format's shape, sometimes another format's or arbitrary bytes
    content, family, entries = data.draw(mostly(CONTENT[fmt], st.sampled_from(list(CONTENT.values())).flatmap(
        lambda s: s), ANY_BYTES), label="content")  # fmt: skip
    _check_convert(fmt, content, family, entries)


def _row(**edit) -> bytes:
    row = {"video_path": "v.mp4", "conversations": [{"role": "user", "content": "q", "timestamp": 1}], **edit}
    return json.dumps(row).encode()


def _ovo(**edit) -> bytes:
    return json.dumps([{**OVO_ENTRIES[0], **edit}]).encode()


def _probe(realtime) -> bytes:
    return json.dumps([{**OVO_ENTRIES[2], "test_info": [{"realtime": realtime, "type": 0}]}]).encode()


def _sb(entry: dict, **edit) -> bytes:
    return json.dumps([{**entry, "questions": [{**entry["questions"][0], **edit}]}]).encode()


def _vst(**columns) -> bytes:
    good = {"data_source": "yes or no", "prompt": "Is it?", "video_context": "x.mp4",
            "reward_model": {"ground_truth": ["Yes"]}, "extra_info": {"duration": 5.0}}  # fmt: skip
    return _parquet(pa.table({k: [v] for k, v in {**good, **columns}.items()}))


# Inputs that each broke a converter (a raw exception, or a row that read_rows then rejected).
CONVERT_REGRESSIONS = {
    "non-UTF-8 line": ("thinkstream", b'{"a": 1}\n\x80\n'),
    "non-UTF-8 file": ("ovo", b"[\xff]"),
    "integer over the digit limit": ("ovo", b"[" + b"9" * 5000 + b"]"),
    "nesting too deep": ("streamingbench-real", b"[" * 100000),
    "task a list": ("thinkstream", _row(task=["x"])),
    "interaction_mode a list": ("thinkstream", _row(interaction_mode=["x"])),
    "thoughts a number": ("thinkstream-sft", _row(thoughts=3)),
    "timestamp too large for a float": ("thinkstream", _row(video_end=10**400)),
    "NUL in the video path": ("thinkstream", _row(video_path="a\x00b.mp4")),
    "video name too long": ("thinkstream", _row(video_path="/" + "x" * 300)),
    "lone surrogate": ("thinkstream", b'{"video_path": "v\\ud800.mp4", "conversations": '
                                      b'[{"role": "user", "content": "\\udc00", "timestamp": 1}]}'),
    "ovo realtime NaN": ("ovo", _ovo(realtime=math.nan)),
    "ovo realtime inf": ("ovo", _ovo(realtime=math.inf)),
    "ovo realtime negative": ("ovo", _ovo(realtime=-5)),
    "ovo probe realtime a string": ("ovo", _probe("soon")),
    "ovo probe realtime NaN": ("ovo", _probe(math.nan)),
    "streamingbench options not strings": ("streamingbench-real", _sb(SB_REAL, options=[1, 2, 3, 4])),
    "streamingbench task_type a list": ("streamingbench-real", _sb(SB_REAL, task_type=["x"])),
    "streamingbench time stamp too large": ("streamingbench-real", _sb(SB_REAL, time_stamp="9" * 400)),
    "streamingbench negative time stamp": ("streamingbench-proactive", _sb(SB_PROACTIVE, ground_truth_time_stamp="-10")),
    "vst reward_model a string": ("vst", _vst(reward_model="Yes")),
    "vst extra_info a number": ("vst", _vst(extra_info=5.0)),
    "vst data_source a list": ("vst", _vst(data_source=["yes or no"])),
    "vst duration inf": ("vst", _vst(extra_info={"duration": math.inf})),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CONVERT_REGRESSIONS))
def test_converter_regressions(case):
    _check_convert(*CONVERT_REGRESSIONS[case])


@FAST
@given(fmt=st.text(max_size=12).filter(lambda f: f not in FORMATS))
def test_an_unknown_format_is_a_config_error_listing_the_formats(fmt):
    with pytest.raises(ConfigError, match="expected one of thinkstream, ") as e:
        read_source(fmt, __file__)
    assert repr(fmt) in str(e.value)


def test_a_missing_source_is_a_row_error_naming_it(tmp_path):
    for call in (lambda p: read_source("ovo", p), read_json):
        with pytest.raises(RowError, match="no such file") as e:
            call(tmp_path / "gone.json")
        assert e.value.where == str(tmp_path / "gone.json")


# ---------------------------------------------------------------- config loader

RECIPE = Path(streamreason.recipes.__file__).parent / "tiny_synthetic.yaml"
VALID_KEYS = sorted(valid_keys(OmegaConf.structured(StreamReasonConfig)))
KEY_CHARS = string.ascii_letters + string.digits + "._-"
VALUES = st.sampled_from(["1", "-1", "0", "0.5", "1e400", "nan", "abc", "true", "null", "", "???", "[1, 2]",
                          "{a: 1}", "${x}", "${model}", "${oc.env:HOME}", "${oc.decode:1}", "'quoted'", "a=b"])  # fmt: skip


@st.composite
def near_keys(draw) -> str:
    key = draw(st.sampled_from(VALID_KEYS))
    how = draw(st.sampled_from(["same", "suffix", "edit", "drop", "child", "random"]))
    if how == "suffix":
        key += draw(st.text(KEY_CHARS, min_size=1, max_size=3))
    elif how == "edit" and key:
        i = draw(st.integers(0, len(key) - 1))
        key = key[:i] + draw(st.sampled_from(KEY_CHARS)) + key[i + 1 :]
    elif how == "drop":
        i = draw(st.integers(0, len(key) - 1))
        key = key[:i] + key[i + 1 :]
    elif how == "child":
        key += "." + draw(st.text(KEY_CHARS, max_size=5))
    elif how == "random":
        key = draw(st.text(KEY_CHARS + "[] ", max_size=12))
    return key


OVERRIDES = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", near_keys(), VALUES | st.text(KEY_CHARS + " ,:[]{}'", max_size=8)),
    st.text(max_size=10).filter(lambda s: "=" not in s),
)


def _check_config_error(e: ConfigError, key: str) -> None:
    """The message names ``key``: the dotted key, or its last part as its section's check
    writes it (``EnvConfig.chunk_seconds must be > 0``)."""
    msg = str(e)
    assert key in msg or key.rsplit(".", 1)[-1] in msg, (key, msg)


@SLOW
@given(overrides=st.lists(OVERRIDES, min_size=1, max_size=3))
@example(overrides=["rl=3"])  # a whole section replaced: OmegaConf gives no full_key
@example(overrides=["cluster=,"])  # a value that is not YAML
@example(overrides=["optim.grad_clip=" + "9" * 400])  # an int too large for a float field
def test_overrides_raise_only_config_errors_naming_the_key(overrides):
    try:
        cfg = load_config(RECIPE, overrides)
    except ConfigError as e:
        if len(overrides) == 1 and "=" not in overrides[0]:
            assert repr(overrides[0]) in str(e)
        elif len(overrides) == 1:
            _check_config_error(e, overrides[0].split("=", 1)[0])
        return
    assert isinstance(cfg, StreamReasonConfig)


def _recipe() -> dict:
    return yaml.safe_load(RECIPE.read_text())


@st.composite
def edited_recipes(draw) -> tuple[dict, str]:
    """The real recipe with one key added or one value replaced, and that key (dotted)."""
    recipe = _recipe()
    node, path = recipe, []
    while isinstance(node, dict) and node and draw(st.booleans()):
        k = _pick_key(draw, node)
        if not isinstance(node[k], dict):
            break
        node, path = node[k], [*path, k]
    if draw(st.booleans()) or not node:
        # a name, not a YAML number: OmegaConf reads an unquoted 0E0 as the key 0.0 (PyYAML writes
        # it unquoted), and the message then names 0.0
        key = draw(st.from_regex(r"[a-z][a-z0-9_.-]{0,7}", fullmatch=True))
    else:
        key = _pick_key(draw, node)
    node[key] = draw(JSON | VALUES | st.sampled_from(["${nowhere}", "${oc.decode:1}"]))
    return recipe, ".".join([*path, str(key)])


def _load_recipe_text(text: str, overrides: list[str] = ()):
    with written(text.encode("utf-8", "surrogatepass"), ".yaml") as path:
        return load_config(path, overrides)


@SLOW
@given(edited=edited_recipes())
@example(edited=({**_recipe(), "model": "${nowhere}"}, "model"))  # an interpolation that does not resolve
@example(edited=({**_recipe(), "rl": 3}, "rl"))  # a section replaced: OmegaConf gives no full_key
@example(edited=({**_recipe(), "rollout": {**_recipe()["rollout"], "env": "1"}}, "rollout.env"))  # and deeper
@example(edited=({**_recipe(), "optim": {**_recipe()["optim"], "grad_clip": 10**400}}, "optim.grad_clip"))
def test_an_edited_recipe_raises_only_config_errors_naming_the_key(edited):
    recipe, key = edited
    try:
        cfg = _load_recipe_text(yaml.safe_dump(recipe, allow_unicode=False))
    except ConfigError as e:
        _check_config_error(e, key)
        return
    assert isinstance(cfg, StreamReasonConfig)


@SLOW
@given(text=st.text(max_size=60) | JSON.map(lambda v: yaml.safe_dump(v, allow_unicode=False)),
       overrides=st.lists(OVERRIDES, max_size=2))  # fmt: skip
@example(text="- 1\n- 2\n", overrides=[])
@example(text="model: '${oc.decode:1}'\n", overrides=[])
def test_any_recipe_text_raises_only_config_errors(text, overrides):
    try:
        cfg = _load_recipe_text(text, overrides)
    except ConfigError as e:
        assert str(e)
        return
    assert isinstance(cfg, StreamReasonConfig)
