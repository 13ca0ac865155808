import pytest

from streamreason.errors import ConfigError
from streamreason.rollout.protocol import get_protocol

WTS = get_protocol("watch_think_speak")


@pytest.mark.parametrize(
    "text, action, response, think",
    [
        ("<think>red square top left</think><silent>", "silent", None, "red square top left"),
        ("<think>it appeared</think><response>yes", "response", "yes", "it appeared"),
        ("<think>x</think><response> B. red ", "response", "B. red", "x"),
        ("<think></think><silent>", "silent", None, ""),
        # ThinkStream's _check_chunk_format (thinkstream/trainer/grpo.py l. 41-49) accepts these:
        # an empty response, a lazy .*? ending at a later </think>, leading space (strip()).
        ("<think>a</think><response>", "response", "", "a"),
        ("<think>a</think>b</think><silent>", "silent", None, "a</think>b"),
        ("<think>a</think><response>x</think><silent>", "response", "x</think><silent>", "a"),
        ("  <think>a</think><silent>", "silent", None, "a"),
    ],
)
def test_well_formed_turns(text, action, response, think):
    p = WTS.parse(text)
    assert (p.action, p.response, p.think, p.format_ok, p.errors) == (action, response, think, True, ())


@pytest.mark.parametrize(
    "text, ended, action, error",
    [
        ("<response>yes", True, "response", "does not start with <think>"),
        ("<think>never closed", True, "invalid", "never closed"),
        ("<think>a</think>", True, "invalid", "no <response> or <silent>"),
        ("<think>a</think><silent> and more", True, "silent", "text after <silent>"),
        ("<think>a</think>hmm<response>C", True, "response", "between </think> and <response>"),
        (
            "<think>a</think><silent> ",
            True,
            "silent",
            "nor before the end token",
        ),  # grpo.py l. 49: (text + end).strip()
        ("<think>a</think><silent>", False, "silent", "cut by max_new_tokens"),
        ("", True, "invalid", "does not start with <think>"),
        ("\x00\ufffd<|im_start|>", True, "invalid", "no <response> or <silent>"),
        ("a</think><response>A", True, "response", "does not start with <think>"),
    ],
)
def test_malformed_turns_are_reported_not_raised(text, ended, action, error):
    p = WTS.parse(text, ended=ended)
    assert p.action == action
    assert not p.format_ok
    assert any(error in e for e in p.errors), p.errors


def test_parser_survives_non_text():
    p = WTS.parse(None)  # type: ignore[arg-type]
    assert p.action == "invalid" and not p.format_ok


def test_streamo_states():
    s = get_protocol("streamo")
    assert s.parse("<standby>").action == "standby" and s.parse("<standby>").format_ok
    assert s.parse("<think>hm</think><silent>").action == "silent"
    assert s.parse("<response>3").response == "3"
    bad = s.parse("maybe")
    assert bad.action == "invalid" and not bad.format_ok


def test_unknown_protocol_names_the_registered_ones():
    with pytest.raises(ConfigError, match="watch_think_speak"):
        get_protocol("nope")


@pytest.mark.parametrize("name", ["watch_think_speak", "streamo"])
@pytest.mark.parametrize(
    "think, action, response", [("a red square", "response", "yes"), ("", "silent", None)]
)
def test_render_is_the_inverse_of_parse(name, think, action, response):
    proto = get_protocol(name)
    p = proto.parse(proto.render(think, action, response))
    assert (p.action, p.think, p.response, p.format_ok) == (action, think, response, True)
