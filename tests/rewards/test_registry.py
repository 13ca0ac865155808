from pathlib import Path

import pytest

from streamreason.errors import ConfigError
from streamreason.rewards import format_reward, get_reward, register_reward, registry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_reward.py"


def test_register_reward_makes_a_name(monkeypatch):
    monkeypatch.setattr(registry, "_REWARDS", registry._REWARDS.copy())

    @register_reward("always_one")
    def always_one(episode):
        return 1.0

    assert get_reward("always_one") is always_one
    assert "always_one" in registry.list_rewards()
    with pytest.raises(ValueError, match="'always_one' is already registered to .*always_one"):
        register_reward("always_one")(always_one)
    with pytest.raises(ValueError, match="contains ':'"):
        register_reward("a:b")(always_one)


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(
        ConfigError, match=r"unknown reward 'timeing'; registered: correctness, efficiency, format"
    ):
        get_reward("timeing")


def test_file_spec_loads_the_example(make_episode, monkeypatch):
    brevity = get_reward(f"{EXAMPLE}:brevity")
    assert brevity(make_episode(4, {1: "yes", 2: "no, it is blue"})) == pytest.approx(1 - 8.5 / 100)
    assert brevity(make_episode(4, {1: "yes"}), cap_chars=3) == 0.0
    assert brevity(make_episode(4, {})) == 1.0
    monkeypatch.chdir(EXAMPLE.parents[1])
    assert get_reward("examples/custom_reward.py:brevity").__name__ == "brevity"


def test_module_spec(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def silence(episode):\n    return 1.0\n\nLIMIT = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_reward("my_rewards:silence")(None) == 1.0
    assert get_reward("streamreason.rewards.builtin:format_reward") is format_reward

    with pytest.raises(ConfigError, match=r"'my_rewards:LIMIT': 'LIMIT' is a int, not a function"):
        get_reward("my_rewards:LIMIT")
    with pytest.raises(ConfigError, match=r"'my_rewards:loudness': my_rewards defines no 'loudness'"):
        get_reward("my_rewards:loudness")
    with pytest.raises(
        ConfigError, match=r"'no_such_pkg.rewards:fn': No module named 'no_such_pkg'.*PYTHONPATH"
    ):
        get_reward("no_such_pkg.rewards:fn")


def test_bad_file_specs(tmp_path):
    with pytest.raises(ConfigError, match=r"'missing/file.py:fn': no file .*missing/file.py"):
        get_reward("missing/file.py:fn")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_real_module\n")
    with pytest.raises(ConfigError, match=r"importing .*broken.py failed: ModuleNotFoundError"):
        get_reward(f"{broken}:fn")
    with pytest.raises(ConfigError, match="expected 'path/to/file.py:fn' or 'module:fn'"):
        get_reward(f"{broken}:")
