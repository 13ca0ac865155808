import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from streamreason.errors import ConfigError, RewardError
from streamreason.rewards import THINKSTREAM_WEIGHTS, CompositeReward, RewardConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_reward.py"

CUSTOM = """
import math

def crash(episode):
    raise RuntimeError("boom")

def with_parts(episode):
    return {"score": 0.25, "n_turns": len(episode.turns)}

def no_score(episode):
    return {"n_turns": 1.0}

def not_finite(episode):
    return math.nan
"""


@pytest.fixture
def custom_file(tmp_path):
    path = tmp_path / "custom.py"
    path.write_text(CUSTOM)
    return path


@pytest.fixture
def episode(make_episode):
    # gt chunk 2; answered correctly at chunk 6 (d = 4 → timing 0.8); think avg 12 → efficiency 0.5.
    return make_episode(8, {6: "Yes."}, think_tokens=12, row_id="vid-7")


def test_thinkstream_total(episode):
    result = CompositeReward(RewardConfig())(episode)
    assert RewardConfig().weights == THINKSTREAM_WEIGHTS
    assert result.ok and result.error is None
    assert result.components == pytest.approx(
        {"format": 1.0, "timing": 0.8, "correctness": 1.0, "efficiency": 0.5}
    )
    assert result.total == pytest.approx(0.2 * 1.0 + 0.2 * 0.8 + 0.4 * 1.0 + 0.2 * 0.5)


def test_zero_weights_are_reported_and_params_passed(episode):
    cfg = RewardConfig(
        weights={"correctness": 1.0, "timing": 0.0, "response_count": 0.0},
        params={"timing": {"slack_seconds": 0.0, "window_chunks": 8}},
    )
    result = CompositeReward(cfg)(episode)
    assert result.components == {"correctness": 1.0, "timing": 0.5, "response_count": 1.0}
    assert result.total == 1.0


def test_custom_rewards_from_file_and_dict_components(episode, custom_file):
    cfg = RewardConfig(
        weights={"correctness": 0.5, "brevity": 1.0},
        params={"brevity": {"cap_chars": 8}},
        custom={"brevity": f"{EXAMPLE}:brevity", "parts": f"{custom_file}:with_parts"},
    )
    result = CompositeReward(cfg)(episode)
    # "Yes." is 4 characters: brevity 1 − 4/8; "parts" is unweighted but reported.
    assert result.components == {"correctness": 1.0, "brevity": 0.5, "parts": 0.25, "parts/n_turns": 8.0}
    assert result.total == 0.5 * 1.0 + 1.0 * 0.5


def test_recipe_overrides_merge_into_the_structured_config(episode):
    overrides = [
        f"rewards.custom.brevity={EXAMPLE}:brevity",
        "rewards.weights.brevity=0.1",
        "rewards.params.timing.slack_seconds=1.0",
    ]
    schema = OmegaConf.structured({"rewards": RewardConfig()})
    cfg = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.from_dotlist(overrides)))["rewards"]
    assert cfg.weights == {**THINKSTREAM_WEIGHTS, "brevity": 0.1}
    result = CompositeReward(cfg)(episode)
    # d = 4, s = 1 → timing 1 − 3/5; brevity 1 − 4/100
    assert result.components == pytest.approx(
        {"format": 1.0, "timing": 0.4, "correctness": 1.0, "efficiency": 0.5, "brevity": 0.96}
    )
    assert result.total == pytest.approx(0.2 + 0.2 * 0.4 + 0.4 + 0.2 * 0.5 + 0.1 * 0.96)


@pytest.mark.parametrize(
    "cfg, message",
    [
        (RewardConfig(weights={"timeing": 1.0}), "unknown reward 'timeing'; registered: correctness"),
        (RewardConfig(custom={"x": "nowhere.py:fn"}), "'nowhere.py:fn': no file"),
        (RewardConfig(custom={"timing": "x.py:fn"}), r"\['timing'\] shadow built-in rewards"),
        (RewardConfig(params={"timing_asymmetric": {}}), r"\['timing_asymmetric'\] are not computed"),
        (
            RewardConfig(params={"timing": {"slack_s": 1.0}}),
            "rewards.params.timing: got an unexpected keyword",
        ),
        (RewardConfig(weights={"format": math.inf}), "rewards.weights.format must be a finite number"),
        (RewardConfig(on_error="ignore"), "on_error must be 'raise' or 'skip'"),
    ],
)
def test_bad_configs_fail_at_construction(cfg, message):
    with pytest.raises(ConfigError, match=message):
        CompositeReward(cfg)


@pytest.mark.parametrize(
    "fn, reason",
    [
        ("crash", "RuntimeError: boom"),
        ("no_score", r"without the required 'score' key: \['n_turns'\]"),
        ("not_finite", "bad = nan is not a finite number"),
    ],
)
def test_failing_reward_raises_reward_error(episode, custom_file, fn, reason):
    reward = CompositeReward(RewardConfig(custom={"bad": f"{custom_file}:{fn}"}, on_error="raise"))
    with pytest.raises(RewardError, match=reason) as info:
        reward(episode)
    assert (info.value.reward, info.value.row_id) == ("bad", "vid-7")


def test_builtin_failure_names_the_reward(make_episode):
    reward = CompositeReward(RewardConfig(weights={"correctness": 1.0}, on_error="raise"))
    with pytest.raises(
        RewardError, match="reward 'correctness' failed on row 'row-1': ValueError: nothing to score"
    ):
        reward(make_episode(4, {1: "yes"}, queries=[]))


def test_on_error_skip_returns_a_failed_result(episode, custom_file):
    reward = CompositeReward(RewardConfig(custom={"bad": f"{custom_file}:crash"}))  # skip is the default
    result = reward(episode)
    assert not result.ok
    assert result.error == "reward 'bad' failed on row 'vid-7': RuntimeError: boom"
    assert math.isnan(result.total) and result.components == {}
