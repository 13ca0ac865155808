r"""VST (Video Streaming Thinking, arXiv 2603.12262): its turn protocol and its memory policy.

Transcribed from 1ranGuan/VST (commit b6f4490): ``VST-RL/recurrent/impls/video_memory.py``
(``VideoMemoryAgent`` with ``prompt_type="type1"``, which ``VST-RL/run.sh`` l. 29 sets; "l." below
is a line of that file unless another file is named) and ``VST-RL/recurrent/utils.py``
(``chat_template_v2``, l. 126; ``TokenTemplate``, l. 25).

Every turn is a fresh prompt: the Qwen chat of ``chat_template_v2`` holding a text memory of all
earlier outputs and the current clip only::

    <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
    <|im_start|>previous text\n[System]\nYou are a Streaming Video Analyst.\n{memory}<|im_end|>\n
    <|im_start|>user\nTime=31.0-62.0s <|vision_start|>...<|vision_end|><|im_end|>\n
    <|im_start|>assistant\n

``{memory}`` (``MEMORY_PROMPT``, l. 309) is, for each earlier turn, its clip's time stamp
``Time=s-es `` (the tokens from ``Time`` to ``<|vision_start|>`` of its prompt,
``_get_time_stamp_ids``, l. 498), its output without the end-of-turn token and a newline (token
198): ``new_content = ts_item + resp_item + [198]`` (``update``, l. 545-570). The user turn is
``TEMPLATE_TYPE_1`` (l. 283), ``{TimeStamp} {VideoClip}``. The turn where the question is asked,
VST's final turn, adds ``TEMPLATE_FINAL_BOXED_TYPE_1`` (l. 295) after the clip::

    \nTime=70.0s Based on the provided Video Memory and the Current Video Clip, answer the following Problem.
    {question}
    Output the final answer in \boxed{{}}.
    Your answer:\n

The doubled braces are VST's: the template is substituted into the chat template by
``str.format`` (l. 329), which does not read the substituted text, and ``TokenTemplate`` fills
only ``{Name}`` keys, so ``\boxed{{}}`` reaches the model as written in the source.

What differs from VST, on purpose:

* Clips. VST cuts a video's visual tokens into clips of ``video_clip_token_size`` = 5000
  (``run.sh`` l. 18): ``floor(5000 / tokens per frame pair)`` frame pairs each (31 pairs, 31 s at
  2 fps, at the 160-token pixel cap), then a final turn on the remainder (l. 396-408), or on the
  last 4 frames again when there is none (l. 410-415). Here the env cuts chunks of
  ``rollout.env.chunk_seconds`` (``chunking="ceil"``: the last chunk holds the remainder, its
  window reaching a whole chunk past the end), so a video of whole clips has no extra turn.
* Time stamps are the chunk windows, not frame index × duration / frames (l. 446-450); the
  final turn's ``Time=...s`` is the question's time (VST rows: the video's duration, which is
  where VST's last clip ends).
* Token boundaries: VST tokenizes each template section apart (``TokenTemplate``) and our chat
  encoder each user-turn piece (head, video, queries) as one text; the text is the same.
* Questions: VST asks one, on its last turn; here every chunk holding a query gets the final
  template (the env shows a query in the chunk of its time; the VST converter asks at the
  video's duration, so that is the last chunk).

The prompt layout is token-level, with no tokenizer in the memory: :class:`VSTProtocol`'s system
prompt ends with the opening of the ``previous text`` turn, so the encoder's system ids are
``<|im_start|>system\n...<|im_end|>\n<|im_start|>previous text\n[System]\nYou are a Streaming
Video Analyst.\n<|im_end|>\n`` (``ChatEncoder`` closes them with ``<|im_end|>\n``) and
:class:`VSTMemory` splices the text memory in before that closing ``<|im_end|>\n``.
"""

from __future__ import annotations

import re

from mathruler.grader import extract_boxed_content

from streamreason.rollout.chat import VideoSegment
from streamreason.rollout.memory import Memory, MemoryConfig, MemoryStats, Prompt, register_memory
from streamreason.rollout.protocol import Protocol, register_protocol
from streamreason.types import Query

VST_SYSTEM = "You are a helpful assistant."
"""The system turn of ``chat_template_v2`` (``VST-RL/recurrent/utils.py`` l. 127)."""
MEMORY_HEADER = "[System]\nYou are a Streaming Video Analyst.\n"
"""``MEMORY_PROMPT`` (l. 309) before its ``{memory}``: the ``previous text`` turn's opening."""
FINAL_INSTRUCTION = (
    "Based on the provided Video Memory and the Current Video Clip, answer the following Problem."
)
"""``TEMPLATE_FINAL_BOXED_TYPE_1`` (l. 295-300) after ``{EndTime}``."""
BOXED_INSTRUCTION = "Output the final answer in \\boxed{{}}."
"""The final turn's last instruction as VST's model reads it (doubled braces: module docstring)."""


def boxed_answer(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` in ``text`` with balanced braces (mathruler's
    ``extract_boxed_content``, which VST's numerical reward uses), or None when there is none
    (mathruler says ``"None"`` then, so a boxed ``None`` reads as no answer)."""
    content = extract_boxed_content(text)
    return None if content == "None" else content


@register_protocol("vst")
class VSTProtocol(Protocol):
    r"""VST's turns: a free-text streaming thought per clip; the turn of the question answers in
    ``\boxed{}`` (module docstring).

    VST has no tags: a turn's text is its thought. :meth:`parse` reads a turn with a box as
    ``action="response"``, ``response`` the last box's content and ``think`` the text before
    it; a turn without one as ``"silent"`` with the whole text as ``think``. A turn is well formed
    when it is not empty and ended with its end-of-turn token (VST has no format rule: its
    format reward is commented out, ``VST-RL/verl/utils/reward_score/general_mc.py`` l. 66-69).
    """

    system_prompt = f"{VST_SYSTEM}<|im_end|>\n<|im_start|>previous text\n{MEMORY_HEADER}"
    DECISION = re.compile(r".*\\boxed\{.*\}.*", re.DOTALL)
    FORMAT = re.compile(r".*\S.*", re.DOTALL)
    STATES = ("silent", "response")
    THINK_OPTIONAL = True

    def chunk_header(self, start_s: float, end_s: float) -> str:
        """``ts_str`` (l. 450) and the space ``TEMPLATE_TYPE_1`` puts before the clip."""
        return f"Time={start_s:.1f}-{end_s:.1f}s "

    def query_text(self, query: Query) -> str:
        """The rest of ``TEMPLATE_FINAL_BOXED_TYPE_1`` after the clip, ``EndTime`` (l. 464) being
        the question's time."""
        return f"\nTime={query.time_s:.1f}s {FINAL_INSTRUCTION}\n{query.text}\n{BOXED_INSTRUCTION}\nYour answer:\n"

    def render(self, think: str | None, action: str, response: str | None = None) -> str:
        r"""The thought, then ``\boxed{response}`` for a response (the inverse of :meth:`parse`)."""
        text = think or ""
        if action == "response":
            text = f"{text} \\boxed{{{response}}}".lstrip()
        return text

    def read(self, text, errors):
        stripped = text.strip()
        if not stripped:
            errors.append("empty turn")
            return "invalid", None, None
        answer = boxed_answer(text)
        if answer is None:
            return "silent", stripped, None
        return "response", text[: text.rfind("\\boxed{")].strip() or None, answer


@register_memory("vst")
class VSTMemory(Memory):
    """VST's memory: each turn a fresh prompt of the system turn, a text memory of every earlier
    output with its clip's time stamp, and the current clip's user turn (module docstring).

    Rules: ``video_cutoff(t) = t`` (only the current clip's video), ``block_start(t) = t`` (each
    turn is its own training row, as in VST where each turn is its own sequence) and one video
    per prompt. ``window_chunks``, ``evict_block``, ``keep_all_video``, the text cap and
    ``eviction`` are not read.

    Token layout (no tokenizer): ``system_ids`` end with the end-of-turn token and a newline
    (``<|im_end|>\\n``, :class:`~streamreason.rollout.chat.ChatEncoder`); the memory goes before
    them. A turn's time stamp is its user turn's head after the first newline (the head is
    ``<|im_start|>user\\n`` + :meth:`VSTProtocol.chunk_header`); its memory entry is the stamp,
    the reply with every end-of-turn token dropped (VST's ``unpad(..., remove_eos=True)``,
    ``VST-RL/recurrent/utils.py`` l. 212) and so ending with the env's newline: VST's
    ``ts_item + resp_item + [198]`` whether the turn ended or was cut.

    Args:
        cfg: :class:`MemoryConfig`.
        system_ids: the encoder's system ids (:class:`VSTProtocol` makes them end inside the
            ``previous text`` turn).

    Raises:
        ValueError: ``system_ids`` shorter than its closing ``<|im_end|>\\n``.
    """

    def __init__(self, cfg: MemoryConfig, system_ids: list[int]):
        super().__init__(cfg, system_ids)
        if len(self.system_ids) < 2:
            raise ValueError("VSTMemory: system_ids must end with the end-of-turn token and a newline")
        self.end_of_turn_id, self.newline_id = self.system_ids[-2], self.system_ids[-1]
        self.text_memory: list[int] = []
        self.turn = -1
        self._current: tuple[list[int], VideoSegment, list[int]] | None = None
        self._stamp: list[int] = []
        self._replied = True
        self._prev_ids: list[int] = []
        self._prev_video_at = 0

    @classmethod
    def video_cutoff(cls, cfg: MemoryConfig, turn: int) -> int:
        """``turn``: the prompt shows the current clip only."""
        return turn

    @classmethod
    def max_videos(cls, cfg: MemoryConfig, max_chunks: int) -> int:
        """1: one clip per prompt."""
        return 1

    def add_chunk(
        self, head: list[int], video: VideoSegment, tail: list[int], has_query: bool = True
    ) -> None:
        """The next clip arrived (``has_query`` is not read: the tail carries the question).

        Raises:
            RuntimeError: the previous turn has no reply yet.
        """
        if not self._replied:
            raise RuntimeError("add_reply() for the previous chunk must come before the next add_chunk()")
        head = list(head)
        at = head.index(self.newline_id) + 1 if self.newline_id in head else 0
        self._current, self._stamp = (head, video, list(tail)), head[at:]
        self.turn += 1
        self._replied = False

    def prompt(self) -> Prompt:
        """System ids, the text memory, their closing ``<|im_end|>\\n``, the current user turn."""
        if self._current is None:
            raise RuntimeError("prompt() before any add_chunk()")
        head, video, tail = self._current
        before = [*self.system_ids[:-2], *self.text_memory, *self.system_ids[-2:], *head]
        ids = [*before, *video.ids, *tail]
        types = [0] * len(before) + list(video.mm_token_type_ids) + [0] * len(tail)
        shared = 0  # leading ids equal to the previous prompt's, up to either's video
        for a, b in zip(ids[: min(len(before), self._prev_video_at)], self._prev_ids):
            if a != b:
                break
            shared += 1
        self._prev_ids, self._prev_video_at = ids, len(before)
        stats = MemoryStats(len(ids), video.visual_tokens, shared, 1)
        return Prompt(ids, types, [video], [self.turn], self.block_start(self.cfg, self.turn), stats)

    def add_reply(self, reply_ids: list[int]) -> None:
        """Append the turn's memory entry: its time stamp, then ``reply_ids`` (generated ids and
        the env's end-of-turn ids) without end-of-turn tokens."""
        self.text_memory += self._stamp + [t for t in reply_ids if t != self.end_of_turn_id]
        self._replied = True
