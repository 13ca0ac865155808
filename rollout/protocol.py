"""Turn protocols: what the policy is told to output after each chunk, and the parser.

A protocol owns the system prompt, the text of a user turn (time marker and queries) and the
parser of one assistant turn. Two are registered:

* ``watch_think_speak`` (ThinkStream, arXiv 2603.12938): ``<think>...</think>`` then ``<response>text``
  or ``<silent>``; a turn is well-formed iff it matches
  ``^<think>.*?</think>(<response>.*|<silent>)<end>$`` (``<end>`` = the end-of-turn token).
* ``streamo`` (Streamo's three states): ``<silent>``, ``<standby>`` (evidence is arriving) or
  ``<response>text``, with an optional leading think span.

Add one with ``@register_protocol("name")`` on a :class:`Protocol` subclass; one defined in
another module also gets a line in ``_BUILTIN_MODULES`` below, so that a recipe naming it imports
it (``vst``: VST's protocol, ``rollout/vst.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from streamreason.errors import ConfigError
from streamreason.registry import Registry
from streamreason.types import Query


@dataclass(frozen=True)
class ParsedTurn:
    """One assistant turn, parsed.

    Attributes:
        action: ``"response"``, ``"silent"``, ``"standby"`` or ``"invalid"``.
        think: text inside the think span, or None.
        response: stripped text after ``<response>`` when ``action == "response"``.
        format_ok: the turn matched the protocol's format exactly, end-of-turn included.
        errors: what was wrong, in words (empty exactly when ``format_ok``).
    """

    action: str
    think: str | None
    response: str | None
    format_ok: bool
    errors: tuple[str, ...] = ()


THINK_BUDGET_COUNTS = ("span", "generated")
"""What the think budget counts (:class:`ProtocolConfig`, ``rollout/engine.py`` ``ThinkBudget``)."""


@dataclass
class ProtocolConfig:
    """Protocol and per-turn generation limits.

    Attributes:
        name: registered protocol name.
        think_budget: the count at which ``</think>`` is forced (ThinkStream: 20); 0 disables
            forcing.
        think_budget_counts: what the budget counts (``rollout/engine.py``, ``ThinkBudget``):
            ``span``, the tokens after ``<think>`` (the budget is the think span's length; the
            default), or ``generated``, every token the turn generated, ``<think>`` included, as
            ThinkStream's ``think_budget_sample`` (``thinkstream/model/inference.py``) does: a
            budget of 20 leaves 19 tokens inside the span.
        force_end_of_turn: force the end-of-turn token at position ``max_new_tokens - 1``, as
            ThinkStream's ``StreamingInferenceEngine.generate`` does, so that a turn cut by the
            limit still ends (and can be well formed). Off by default: a cut turn then ends with
            ``finish_reason="length"`` and the format reward marks it.
        max_new_tokens: generated tokens per turn, forced ones included (ThinkStream: 30).

    Raises:
        ConfigError: ``think_budget`` < 0, ``max_new_tokens`` < 1 or an unknown
            ``think_budget_counts``.
    """

    name: str = "watch_think_speak"
    think_budget: int = 20
    think_budget_counts: str = "span"
    force_end_of_turn: bool = False
    max_new_tokens: int = 30

    def __post_init__(self):
        counts = THINK_BUDGET_COUNTS
        checks = [
            ("think_budget", self.think_budget >= 0, "must be >= 0"),
            ("think_budget_counts", self.think_budget_counts in counts, f"must be one of {list(counts)}"),
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
        ]
        for key, ok, rule in checks:
            if not ok:
                raise ConfigError(f"protocol.{key} {rule}, got {getattr(self, key)!r}")


class Protocol:
    """Base class: tags, prompts and the parser.

    Subclasses set ``system_prompt``, ``DECISION`` (what follows the think span) and ``FORMAT`` (the regex a well-formed turn matches in
    full, end token excluded, leading whitespace dropped) and implement :meth:`read`, which
    explains a turn that fails ``FORMAT``.
    """

    name: ClassVar[str]
    think_open: ClassVar[str] = "<think>"
    think_close: ClassVar[str] = "</think>"
    system_prompt: ClassVar[str]
    DECISION: ClassVar[re.Pattern]
    FORMAT: ClassVar[re.Pattern]
    STATES: ClassVar[tuple[str, ...]] = ("silent", "response")
    """The decisions a well-formed turn takes (:attr:`ParsedTurn.action`); SFT's gold turns use them."""
    THINK_OPTIONAL: ClassVar[bool] = False
    """A well-formed turn may leave out the think span (SFT's gold then writes none when a turn has
    no thought)."""

    def chunk_header(self, start_s: float, end_s: float) -> str:
        """Time marker of a chunk; it stays in the context after the chunk's video is evicted."""
        return f"[{start_s:.1f}s-{end_s:.1f}s]"

    def query_text(self, query: Query) -> str:
        """A query as shown in the user turn of the chunk where it is asked."""
        return f"\nQuestion (asked at {query.time_s:.1f}s): {query.text}"

    def render(self, think: str | None, action: str, response: str | None = None) -> str:
        """A well-formed turn (the inverse of :meth:`parse`), e.g. a gold turn for SFT."""
        head = "" if think is None else f"{self.think_open}{think}{self.think_close}"
        return head + (f"<response>{response}" if action == "response" else f"<{action}>")

    def parse(self, text: str, ended: bool = True) -> ParsedTurn:
        """Parse one assistant turn. Never raises: malformed text gives ``format_ok=False``.

        ``format_ok`` is ``ended and FORMAT.fullmatch(text.lstrip())``: for watch_think_speak,
        ThinkStream's ``_check_chunk_format`` (``thinkstream/trainer/grpo.py``) on the turn with
        its end token, exactly (a second ``</think>``, an empty ``<response>`` and text up to a
        later ``</think>`` are well formed; a space after ``<silent>`` is not).

        Args:
            text: the decoded turn, end-of-turn token removed.
            ended: whether the turn ended with the end-of-turn token (not cut by max tokens).
        """
        if not isinstance(text, str):
            return ParsedTurn("invalid", None, None, False, (f"turn is {type(text).__name__}, not text",))
        errors: list[str] = []
        action, think, response = self.read(text, errors)
        # FORMAT decides; read() only says why a turn fails it. ThinkStream's _check_chunk_format
        # (thinkstream/trainer/grpo.py) matches (text + end).strip(): leading space is dropped,
        # space before the end token is not.
        if self.FORMAT.fullmatch(text.lstrip()):
            errors = []
        elif not errors:
            errors.append(
                f"turn does not match {self.FORMAT.pattern} in full (no space between tags, nor before the end token)"
            )
        if not ended:
            errors.append("turn cut by max_new_tokens before its end-of-turn token")
        format_ok = ended and not errors
        return ParsedTurn(action, think, response, format_ok, tuple(errors))

    def read(self, text: str, errors: list[str]) -> tuple[str, str | None, str | None]:
        """``(action, think, response)`` of ``text``, appending what is malformed to ``errors``."""
        raise NotImplementedError


_BUILTIN_MODULES: dict[str, str] = {"vst": "streamreason.rollout.vst"}
"""Name -> module of the built-in protocols defined in other modules, imported on first lookup."""
_PROTOCOLS: Registry[type[Protocol]] = Registry(
    "protocol", config_key="rollout.protocol.name", builtin_modules=_BUILTIN_MODULES
)


def register_protocol(name: str):
    """Class decorator registering a :class:`Protocol` subclass under ``name`` (its :attr:`name`).

    Raises:
        ValueError: ``name`` is taken by another class.
    """

    def wrap(cls: type[Protocol]) -> type[Protocol]:
        _PROTOCOLS.register(name, cls)
        cls.name = name
        return cls

    return wrap


def get_protocol(name: str) -> Protocol:
    """An instance of the protocol registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    return _PROTOCOLS.get(name)()


def _split_think(
    text: str, open_tag: str, close_tag: str, errors: list[str], decision: re.Pattern
) -> tuple[str | None, str]:
    """``(think, rest)``; records what is missing in ``errors``.

    The think span ends at the first ``close_tag`` that ``decision`` follows in full, else at
    the first ``close_tag``: the split of ``<think>.*?</think>(decision)`` (lazy, so a later
    ``</think>`` can end the span, as in ThinkStream's format regex)."""
    stripped = text.lstrip()
    if not stripped.startswith(open_tag):
        errors.append(f"turn does not start with {open_tag}")
        if close_tag in text:  # lenient: a close tag alone still delimits the think span
            think, rest = text.split(close_tag, 1)
            return think.replace(open_tag, "").strip(), rest
        return None, text
    body = stripped[len(open_tag) :]
    if close_tag not in body:
        errors.append(f"{open_tag} is never closed by {close_tag}")
        return body.strip(), ""
    cuts = [m.start() for m in re.finditer(re.escape(close_tag), body)]
    cut = next((i for i in cuts if decision.fullmatch(body[i + len(close_tag) :])), cuts[0])
    return body[:cut].strip(), body[cut + len(close_tag) :]


@register_protocol("watch_think_speak")
class WatchThinkSpeak(Protocol):
    """ThinkStream's Watch-Think-Speak protocol (arXiv 2603.12938)."""

    system_prompt = (
        "You are watching a video stream, one chunk at a time. After each chunk, think briefly "
        "about what you just saw inside <think></think>. Then, if a question can be answered now, "
        "write <response> followed by the answer; otherwise write <silent>. Answer each question "
        "once, as soon as the video shows the answer, and never before."
    )
    DECISION = re.compile(r"<response>.*|<silent>", re.DOTALL)
    FORMAT = re.compile(rf"^<think>.*?</think>({DECISION.pattern})$", re.DOTALL)

    def read(self, text, errors):
        think, rest = _split_think(text, self.think_open, self.think_close, errors, self.DECISION)
        rest_s = rest.strip()
        if "<response>" in rest_s:
            action, response = "response", rest_s.split("<response>", 1)[1].strip()
            if not rest_s.startswith("<response>"):
                errors.append("text between </think> and <response>")
            if not response:
                errors.append("empty <response>")
        elif rest_s.startswith("<silent>"):
            action, response = "silent", None
            if rest_s != "<silent>":
                errors.append("text after <silent>")
        else:
            action, response = "invalid", None
            errors.append("no <response> or <silent> after the think span")
        return action, think, response


@register_protocol("streamo")
class Streamo(Protocol):
    """Streamo's three states: Silence, Standby (evidence arriving), Response.

    Streamo (arXiv 2512.21334; maifoundations/Streamo) writes one state per 1 s frame,
    ``</Silence>``, ``</Standby>`` or ``</Response> text`` (``scripts/convert_streaming_video.py``,
    ``STATE_*``), with no think span; here the tags are ``<silent>``, ``<standby>``,
    ``<response>`` and a think span may come first.
    """

    system_prompt = (
        "You are watching a video stream, one chunk at a time. After each chunk, optionally think "
        "inside <think></think>, then output exactly one state: <silent> when nothing relevant is "
        "happening, <standby> when evidence for a question is arriving but the answer is not yet "
        "certain, or <response> followed by the answer when it can be given now."
    )
    DECISION = re.compile(r"<response>.*\S.*|<silent>|<standby>", re.DOTALL)
    FORMAT = re.compile(rf"^(<think>.*?</think>)?({DECISION.pattern})$", re.DOTALL)
    STATES = ("silent", "standby", "response")
    THINK_OPTIONAL = True

    def read(self, text, errors):
        think, rest = None, text
        if self.think_open in text or self.think_close in text:
            think, rest = _split_think(text, self.think_open, self.think_close, errors, self.DECISION)
        rest_s = rest.strip()
        response = None
        if rest_s.startswith("<response>"):
            action, response = "response", rest_s[len("<response>") :].strip()
            if not response:
                errors.append("empty <response>")
        elif rest_s in ("<silent>", "<standby>"):
            action = rest_s[1:-1]
        else:
            action = "invalid"
            errors.append("output is not one of <silent>, <standby>, <response>text")
        return action, think, response
