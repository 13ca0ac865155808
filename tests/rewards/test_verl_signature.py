"""Custom rewards in verl's signature plug in unchanged (issue 20, item 3).

The oracle is VST's own reward code, copied byte for byte under ``official_vst/`` (see its
SOURCE.md): ``_default_compute_score`` is VST's ``compute_score``, loaded by a spec whose file
is the package's ``__init__.py`` (its branches import ``general_mc`` & co. relatively).
Line numbers below are those of the copied files.
"""

import json
import sys
from pathlib import Path

import pytest

from streamreason.errors import ConfigError, RewardError
from streamreason.rewards.composite import CompositeReward, RewardConfig
from streamreason.rewards.registry import (
    VerlComputeScore,
    get_reward,
    is_verl_compute_score,
    verl_score_inputs,
)
from streamreason.types import Episode, Query, TurnOutcome

VST = Path(__file__).resolve().parent / "official_vst" / "__init__.py"
VST_SPEC = f"{VST}:_default_compute_score"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "verl_compute_score.py"


def _episode(*texts, answer="B", data_source="multiple choice", row_id="vst-1", **meta) -> Episode:
    """A streaming trajectory whose turns decode to ``texts`` (the last one is the final answer)."""
    turns = [
        TurnOutcome(k, float(k), k + 1.0, "response", think="...", think_tokens=3, format_ok=True, text=t)
        for k, t in enumerate(texts)
    ]
    if data_source is not None:
        meta["data_source"] = data_source
    query = Query("Which option?", time_s=float(len(texts) - 1), answer=answer, answer_time_s=0.0)
    return Episode(row_id=row_id, chunk_seconds=1.0, queries=[query], turns=turns, meta=meta)


def _vst(episode: Episode) -> float:
    result = CompositeReward(RewardConfig(weights={"vst": 1.0}, custom={"vst": VST_SPEC}, on_error="raise"))(
        episode
    )
    assert set(result.components) == {"vst"}
    return result.total


def test_detected_from_the_signature():
    def verl(data_source, solution_str, ground_truth, extra_info=None, **kwargs): ...

    def ours(episode, cap_chars=100): ...

    assert is_verl_compute_score(verl) and not is_verl_compute_score(ours)
    assert not is_verl_compute_score(max)  # no readable signature: an Episode reward as before
    fn = get_reward(VST_SPEC)
    assert isinstance(fn, VerlComputeScore) and fn.__name__ == "_default_compute_score"
    assert str(__import__("inspect").signature(fn)) == "(episode, **kwargs)"


@pytest.mark.parametrize(
    "final, gt, expected",
    [
        # general_mc.py:33-38: the first lone A-E inside \boxed{...}; :56-60: equal to the gt's
        ("so the answer is \\boxed{B}", "B", 1.0),
        ("so the answer is \\boxed{C}", "B", 0.0),
        ("\\boxed{(B) a red square}", "B", 1.0),
        ("I think B", "B", 1.0),  # general_mc.py:39-41: no box, the first lone letter anywhere
        ("\\boxed{A B C D}", "B", 0.0),  # general_mc.py:6: the first letter only
        ("so the answer is \\boxed{B}", ["B."], 1.0),  # general_mc.py:53: VST's data holds ["A."]
    ],
)
def test_vst_multiple_choice(final, gt, expected):
    ground = {} if isinstance(gt, str) else {"ground_truth": gt}
    answer = gt if isinstance(gt, str) else "B"
    assert _vst(_episode("<think>a red square</think><silent>", final, answer=answer, **ground)) == expected


def test_vst_numerical_reads_the_rows_own_ground_truth():
    # general_numerical.py:26-30: gt_raw = str(ground_truth[0]); mathruler's grade_answer on the
    # boxed content. VST's ground truth is a list (["1/2"]): the row's own 'ground_truth' field
    # is passed in that form.
    num = {"data_source": "numerical", "answer": "0.5"}
    assert _vst(_episode("\\boxed{0.5}", ground_truth=["1/2"], **num)) == 1.0
    assert _vst(_episode("\\boxed{\\frac{1}{2}}", ground_truth=["0.5"], **num)) == 1.0
    assert _vst(_episode("\\boxed{0.25}", ground_truth=["1/2"], **num)) == 0.0
    # :28-29: no box: the whole text is graded
    assert _vst(_episode("1/2", ground_truth=["0.5"], **num)) == 1.0
    assert _vst(_episode("it is 0.5", ground_truth=["0.5"], **num)) == 0.0
    # Without the row's field, ground_truth is the query's answer, a string: VST reads its first
    # character, so only one-character answers survive (why the row's own form wins).
    assert _vst(_episode("\\boxed{3}", data_source="numerical", answer="3")) == 1.0
    assert _vst(_episode("\\boxed{12}", data_source="numerical", answer="12")) == 0.0


@pytest.mark.parametrize(
    "final, gt, expected",
    [
        ("\\boxed{Yes}", "yes", 1.0),  # general_bc.py:33-38 and :56-61, case-insensitive
        ("\\boxed{no.}", "no", 1.0),
        ("\\boxed{No}", "yes", 0.0),
        ("\\boxed{Yes but actually No}", "no", 0.0),  # general_bc.py:5: the first one only
    ],
)
def test_vst_yes_or_no(final, gt, expected):
    assert _vst(_episode("<think>...</think><silent>", final, answer=gt, data_source="yes or no")) == expected


def test_only_the_final_turn_is_scored():
    assert _vst(_episode("\\boxed{B}", "\\boxed{C}")) == 0.0
    assert _vst(_episode("\\boxed{C}", "\\boxed{B}")) == 1.0
    # A trajectory whose last turn is silent has no final answer (VST's fallback finds no letter).
    assert _vst(_episode("\\boxed{B}", "<think>nothing new</think><silent>")) == 0.0


def test_inputs_a_compute_score_receives():
    ep = _episode("\\boxed{B}", "\\boxed{C}", answer="B", duration=31.0, task="mc")
    assert verl_score_inputs(ep) == {
        "data_source": "multiple choice",
        "solution_str": "\\boxed{C}",
        "ground_truth": "B",
        "extra_info": {"data_source": "multiple choice", "duration": 31.0, "task": "mc", "id": "vst-1",
                       "num_turns": 2},
    }  # fmt: skip
    assert (
        verl_score_inputs(_episode("x", data_source=None, task="event_timing"))["data_source"]
        == "event_timing"
    )
    assert verl_score_inputs(_episode("x", data_source=None, task=None))["data_source"] == "streamreason"
    ep.queries.insert(0, Query("first?", 0.0, answer="A"))  # several queries: the last one's answer
    assert verl_score_inputs(ep)["ground_truth"] == "B"
    assert verl_score_inputs(Episode("e", 1.0, ep.queries, []))["solution_str"] == ""


def test_a_dict_result_reports_its_numeric_keys(tmp_path):
    # verl's reward managers read result["score"] and log every key (naive.py); DAPO's returns
    # {"score", "acc", "pred"} with a string "pred", which has no place among numeric components.
    (tmp_path / "toy.py").write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, scale=1.0):\n"
        "    acc = solution_str.endswith(ground_truth)\n"
        "    return {'score': scale * acc, 'acc': acc, 'pred': solution_str[-1:], 'n': extra_info['num_turns']}\n"
    )
    cfg = RewardConfig(weights={"toy": 1.0}, custom={"toy": f"{tmp_path / 'toy.py'}:compute_score"})
    assert CompositeReward(cfg)(_episode("A", "B")).components == {"toy": 1.0, "toy/acc": 1.0, "toy/n": 2.0}
    cfg.params = {"toy": {"scale": 0.5}}  # verl's custom_reward_function.reward_kwargs
    assert CompositeReward(cfg)(_episode("A", "B")).total == 0.5
    cfg.params = {"toy": {"sclae": 0.5}}
    with pytest.raises(
        ConfigError, match=r"rewards.params.toy: .*'sclae'.*\(signature: \(episode, \*, scale=1.0\)"
    ):
        CompositeReward(cfg)


def test_the_example(monkeypatch):
    monkeypatch.chdir(EXAMPLE.parents[1])
    cfg = RewardConfig(
        weights={"boxed": 1.0}, custom={"boxed": "examples/verl_compute_score.py:compute_score"}
    )
    assert CompositeReward(cfg)(_episode("\\boxed{B}", "<response>\\boxed{ b }")).components == {
        "boxed": 1.0, "boxed/acc": 1.0, "boxed/format": 1.0,
    }  # fmt: skip
    cfg.params = {"boxed": {"format_weight": 0.2}}
    assert CompositeReward(cfg)(_episode("\\boxed{C}", answer="B", ground_truth=["B."])).total == 0.2
    assert CompositeReward(cfg)(_episode("B", ground_truth=["B"])).total == 0.0


def test_a_failing_compute_score_is_a_failing_reward(tmp_path):
    skip = RewardConfig(weights={"vst": 1.0}, custom={"vst": VST_SPEC})
    result = CompositeReward(skip)(_episode("\\boxed{B}", data_source="hotpotqa"))  # branch not copied
    assert (
        not result.ok
        and "reward 'vst' failed on row 'vst-1': ImportError: cannot import name 'hotpotqa'" in result.error
    )
    with pytest.raises(RewardError, match="NotImplementedError: Reward function is not implemented"):
        CompositeReward(RewardConfig(**{**skip.__dict__, "on_error": "raise"}))(
            _episode("x", data_source="?")
        )
    no_text = Episode("r", 1.0, [Query("q", 0.0, "B")], [TurnOutcome(0, 0.0, 1.0, "response", response="B")])
    assert "has no decoded text" in CompositeReward(skip)(no_text).error
    no_answer = _episode("\\boxed{B}", answer=None)
    assert "no ground truth" in CompositeReward(skip)(no_answer).error
    (tmp_path / "kw.py").write_text(
        "def compute_score(data_source, solution_str, ground_truth, **kw):\n    return 1.0\n"
    )
    kw = RewardConfig(weights={"kw": 1.0}, custom={"kw": f"{tmp_path / 'kw.py'}:compute_score"})
    assert CompositeReward(kw)(no_answer.__class__("r", 1.0, [Query("q", 0, "B")], [])).total == 1.0
    kw.params = {"kw": {"data_source": "x"}}
    assert "verl's inputs, set from the episode" in CompositeReward(kw)(_episode("x")).error


def test_async_compute_score_is_refused(tmp_path):
    (tmp_path / "a.py").write_text(
        "async def compute_score(data_source, solution_str, ground_truth):\n    return 1\n"
    )
    with pytest.raises(ConfigError, match="'async def'"):
        get_reward(f"{tmp_path / 'a.py'}:compute_score")


def test_a_package_init_resolves_its_relative_imports(tmp_path):
    pkg = tmp_path / "my rewards"  # a folder name that is not an identifier
    pkg.mkdir()
    (pkg / "helper.py").write_text("def last_word(s):\n    return s.split()[-1]\n")
    (pkg / "__init__.py").write_text(
        "from .helper import last_word\n\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    from . import helper\n"
        "    return float(helper.last_word(solution_str) == ground_truth)\n"
    )
    fn = get_reward(f"{pkg / '__init__.py'}:compute_score")
    assert fn(_episode("the answer is B")) == 1.0
    assert fn.compute_score.__module__ in sys.modules  # relative imports look the package up there
    assert get_reward(f"{pkg / '__init__.py'}:compute_score").compute_score is fn.compute_score

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "__init__.py").write_text("from . import missing\n")
    with pytest.raises(ConfigError, match=r"importing .*broken/__init__.py failed: ImportError"):
        get_reward(f"{broken / '__init__.py'}:compute_score")
    assert not [
        n for n in sys.modules if n.startswith("streamreason_custom_reward_broken_")
    ]  # a failed import leaves nothing behind


def test_rollout_scores_the_final_turn_with_vst_and_a_toy_compute_score(tiny_model_dir, tmp_path, capsys):
    from streamreason.cli import main

    main(["data", "synth", str(tmp_path / "synth"), "--n", "1", "--seed", "3"])
    data = tmp_path / "synth" / "data.jsonl"
    row = json.loads(data.read_text())
    data.write_text(json.dumps(dict(row, data_source="yes or no")) + "\n")
    toy = tmp_path / "toy.py"
    toy.write_text(
        "import json\n\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, log=None):\n"
        "    with open(log, 'a') as f:\n"
        "        f.write(json.dumps([data_source, solution_str, ground_truth, extra_info]) + '\\n')\n"
        "    return {'score': 0.25, 'length': len(solution_str)}\n"
    )
    log, out = tmp_path / "calls.jsonl", tmp_path / "trajs.jsonl"
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tiny_synthetic.yaml"
    main(["rollout", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
          "--recipe", str(recipe), "rollout.group_size=1", "rollout.env.max_chunks=3",
          "env_pool.in_process=true",  # no Ray session left in the test process (test_sweep's `ray stop` would kill it)
          f"rewards.custom.vst={VST_SPEC}", "rewards.weights.vst=1",
          f"rewards.custom.toy={toy}:compute_score", f"rewards.params.toy.log={log}"])  # fmt: skip
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    final = record["turns"][-1]["text"]
    assert call[:3] == ["yes or no", final, row["conversations"][1]["content"]]
    assert call[3]["id"] == row["id"] and call[3]["task"] == row["task"] and call[3]["num_turns"] == 3
    expected = get_reward(VST_SPEC).compute_score("yes or no", final, call[2])  # VST's, called directly
    assert record["components"]["vst"] == expected
    assert record["components"]["toy"] == 0.25 and record["components"]["toy/length"] == len(final)
    assert "vst" in capsys.readouterr().out
