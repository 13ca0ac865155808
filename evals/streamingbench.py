"""StreamingBench (github.com/THUNLP-MT/StreamingBench): real-time and proactive questions to
streams, output files, the official scorer, and the registered benchmark
:class:`StreamingBench` (``--benchmark streamingbench``, ``data convert --from
streamingbench-real|streamingbench-proactive``).

Source of every rule here, by file of the upstream repository:

* ``src/benchmark/StreamingBench.py``: a real-time question sees the video up to its
  ``time_stamp`` (``"HH:MM:SS"``, parsed as ``sum(int(x) * 60**i)`` over the reversed fields, so
  ``"00:24"`` is 24 s) and is asked with ``PROMPT_TEMPLATE`` (copied verbatim below) followed by
  ``"\\n\\nThe best option is:"``; the response is stored under the model's name in the question.
* ``src/benchmark/StreamingBenchProactive.py``: the model is polled every second from
  ``time_stamp + 1`` to ``ground_truth_time_stamp + 4`` s; the output is
  ``{"answered": t | False, "dialog_history": [{role, content, time, cost}, ...]}``.
* ``src/data/count.py`` ``count``: real-time: a question counts when the model's key is
  present; it is right when the response's first character (``response[0]``) equals
  ``answer`` (no stripping). Per ``task_type`` and a ``total`` over all questions. An empty
  response raises ``IndexError`` there (``None`` a ``TypeError``): count.py has no
  unanswered case, since ``StreamingBench.py`` stores whatever the model returns for every
  question it runs (and runs again a question whose stored response is empty). Proactive:
  right when the last dialog turn's time is within 2 s of the ground-truth time (``time
  accuracy``); the later ``count.py`` also requires ``ground_truth_output`` in that turn's
  content (``answer accuracy``).

Silence counts as wrong, and every evaluated question is in the denominator, as in the
official runs. The harness writes :data:`NO_RESPONSE` for a real-time question the policy did
not answer (silent to the stream's end, or its video failed): count.py reads it and scores it
wrong, as ``"<"`` is no option letter. :func:`score` also counts ``""`` and ``None`` (on which
count.py raises) as unanswered and wrong. A proactive question the policy never speaks in is
written with its silent polls, the last at ground truth + 4 s, so count.py scores it late
(wrong in time and answer); ``answered`` is false and it counts as unanswered.

As streams: a real-time question is one row that stops at its time stamp, asked there. A
proactive question is one row asked at ``time_stamp`` that plays to ground truth + 4 s; each
1 s chunk is a poll, and the first response is the model speaking: its time is the end of the
response's chunk (the video seen so far), as the official ``current_time``. Streams start at 0
(the benchmark's "all context" setting). Each row's ``meta`` holds its ``kind`` (``"real"`` or
``"proactive"``, which decides how it is scored and which output file it goes to) and the
``entry`` and ``question`` indices of the annotation file it comes from.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamreason.envs.convert import ConvertReport, read_json, read_source, register_format
from streamreason.errors import ConfigError, RowError
from streamreason.evals.registry import Benchmark, Prediction, register_benchmark
from streamreason.types import Query, StreamRow

# src/benchmark/StreamingBench.py, verbatim
PROMPT_TEMPLATE = """You are an advanced video question-answering AI assistant. You have been provided with some frames from the video and a multiple-choice question related to the video. Your task is to carefully analyze the video and provide the best answer to question, choosing from the four options provided. Respond with only the letter (A, B, C, or D) of the correct option.

Question: {}

Options:
{}
{}
{}
{}"""  # noqa: E501

# Leaderboard columns of the real-time visual understanding group, in the leaderboard's order.
REAL_TIME_TASKS = {
    "Object Recognition": "OP", "Causal Reasoning": "CR", "Clips Summarize": "CS",
    "Attribute Recognition": "ATP", "Event Understanding": "EU", "Text-Rich Understanding": "TR",
    "Prospective Reasoning": "PR", "Spatial Understanding": "SU", "Action Recognition": "ACP", "Counting": "CT",
}  # fmt: skip
PROACTIVE_GRACE_S = 4  # polling goes on to ground truth + 4 s
PROACTIVE_TOLERANCE_S = 2  # count.py: right when within 2 s of the ground truth
# The real-time response written for a question without one: count.py needs a non-empty string
# (it reads ``response[0]``), and its first character is no option letter, so it scores wrong.
NO_RESPONSE = "<no response>"
KINDS = ("real", "proactive")  # row.meta["kind"]; the output files are <kind>_output_<model>.json


def parse_timestamp(ts: Any, where: str) -> int:
    """Seconds of a StreamingBench time stamp, as the official code parses it.

    Raises:
        RowError: not a ``"[[HH:]MM:]SS"`` string of integers, or negative (or too large for a float).
    """
    try:
        t = sum(int(x) * 60**i for i, x in enumerate(reversed(ts.split(":"))))
    except (AttributeError, ValueError):
        raise RowError(where, f"time stamp {ts!r} is not 'HH:MM:SS'") from None
    if not 0 <= t <= sys.float_info.max:
        raise RowError(where, f"time stamp {ts!r} is not a time in the video (seconds >= 0)")
    return t


def build_prompt(question: dict) -> str:
    """The official real-time prompt (options re-lettered when they lack ``"A."``)."""
    options = question["options"]
    if not options[0].startswith("A."):
        options = [f"A. {options[0]}", f"B. {options[1]}", f"C. {options[2]}", f"D. {options[3]}"]
    return PROMPT_TEMPLATE.format(question["question"], *options) + "\n\nThe best option is:"


def load_questions(path: str | Path) -> list[dict]:
    """The entry list of ``questions_real.json`` / ``questions_proactive.json``.

    Raises:
        RowError: no such file, not JSON, or not a list of entries with ``video_path`` and
            ``questions``.
    """
    data = read_json(path)
    if not isinstance(data, list):
        raise RowError(Path(path).name, "expected a JSON list of StreamingBench entries")
    return data


def _entries(path: Path) -> Iterator[tuple[int, str, dict | RowError]]:
    for e, entry in enumerate(load_questions(path)):
        where = f"{path.name}[{e}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("video_path"), str):
            yield e, where, RowError(where, "entry needs 'video_path' (a string)")
        elif not isinstance(entry.get("questions"), list) or not entry["questions"]:
            yield e, where, RowError(where, "entry needs 'questions' (a non-empty list)")
        else:
            yield e, where, entry


def real_row(question: Any, e: int, q: int, video: str, at: str) -> StreamRow:
    """Row ``sb-real-<e>-<q>`` (``meta``: ``kind="real"``, ``entry=e``, ``question=q``): the
    real-time question asked, and the stream cut, at its time stamp.

    Raises:
        RowError: the question is malformed (names ``at`` and the field).
    """
    if not isinstance(question, dict) or not all(
        isinstance(question.get(k), str) for k in ("question", "answer")
    ):
        raise RowError(at, "needs 'question' and 'answer' (strings)")
    options = question.get("options")
    if not isinstance(options, list) or len(options) < 4 or not all(isinstance(o, str) for o in options):
        raise RowError(at, "needs 'options', a list of 4 strings")
    t = parse_timestamp(question.get("time_stamp"), at)
    meta = {"benchmark": "streamingbench", "kind": "real", "entry": e, "question": q}
    query = Query(build_prompt(question), float(t), question["answer"], float(t))
    return StreamRow(
        f"sb-real-{e}-{q}", video, [query], task=_task_type(question, None, at), meta=meta, end_s=max(t, 1)
    )


def _task_type(question: dict, default: str | None, at: str) -> str | None:
    task = question.get("task_type", default)
    if task is not None and not isinstance(task, str):
        raise RowError(at, f"'task_type' must be a string, got {type(task).__name__}")
    return task


def proactive_row(question: Any, e: int, q: int, video: str, at: str) -> StreamRow:
    """Row ``sb-proactive-<e>-<q>`` (``meta``: ``kind="proactive"``, ``entry=e``,
    ``question=q``): asked at its time stamp, played to ground truth + 4 s.

    Raises:
        RowError: the question is malformed (names ``at`` and the field).
    """
    if not isinstance(question, dict) or not all(
        isinstance(question.get(k), str) for k in ("question", "ground_truth_output")
    ):
        raise RowError(at, "needs 'question' and 'ground_truth_output' (strings)")
    t = parse_timestamp(question.get("time_stamp"), at)
    gt = parse_timestamp(question.get("ground_truth_time_stamp"), at)
    meta = {"benchmark": "streamingbench", "kind": "proactive", "entry": e, "question": q}
    query = Query(question["question"], float(t), question["ground_truth_output"], float(gt))
    return StreamRow(f"sb-proactive-{e}-{q}", video, [query], task=_task_type(question, "Proactive Output", at),
                     meta=meta, end_s=gt + PROACTIVE_GRACE_S)  # fmt: skip


def _read(path: Path, build) -> Iterator[tuple[str, list[StreamRow] | RowError]]:
    for e, where, entry in _entries(path):
        if isinstance(entry, RowError):
            yield where, entry
            continue
        try:
            yield where, [build(question, e, q, entry["video_path"], f"{where}.questions[{q}]")
                          for q, question in enumerate(entry["questions"])]  # fmt: skip
        except RowError as err:
            yield where, err


@register_format("streamingbench-real")
def read_real(path: Path):
    """Converter entry point (``data convert --from streamingbench-real``)."""
    return _read(path, real_row)


@register_format("streamingbench-proactive")
def read_proactive(path: Path):
    """Converter entry point (``data convert --from streamingbench-proactive``)."""
    return _read(path, proactive_row)


def file_kind(data: list) -> str:
    """``"proactive"`` or ``"real"``: the kind of a loaded questions (or output) file; proactive
    questions carry ``ground_truth_output``."""
    proactive = any("ground_truth_output" in q for e in data[:5] if isinstance(e, dict)
                    for q in e.get("questions", []) if isinstance(q, dict))  # fmt: skip
    return "proactive" if proactive else "real"


def proactive_record(polls: list[tuple[float, str]], answered_at: float | None) -> dict:
    """The official proactive output of one question.

    Args:
        polls: ``(time, content)`` of every poll, seconds and the model's text (``""`` when silent).
        answered_at: when the model spoke, or None.
    """
    history = []
    for t, content in polls:
        history.append({"role": "user", "content": "", "time": t, "cost": 0.0})
        history.append({"role": "assistant", "content": content, "time": t, "cost": 0.0})
    return {"answered": answered_at if answered_at is not None else False, "dialog_history": history}


def find_model_key(data: list[dict]) -> str:
    """The model name under which an output file stores responses (the one key that questions
    carry beyond the annotation's).

    Raises:
        RowError: none or several candidate keys.
    """
    known = {"task_type", "question", "time_stamp", "answer", "options", "required_ability", "cause",
             "effect", "ground_truth_time_stamp", "ground_truth_output"}  # fmt: skip
    keys = {k for entry in data for q in entry.get("questions", []) for k in q if k not in known}
    if len(keys) != 1:
        raise RowError("output file", f"cannot tell the model's key among {sorted(keys)}; pass --model-name")
    return keys.pop()


def real_time_correct(response: str | None, answer: str) -> bool:
    """count.py's real-time rule: the response's first character equals the answer letter
    (``" B"`` and ``"b"`` are wrong for B). No response (``None``, ``""`` or
    :data:`NO_RESPONSE`) is wrong."""
    return bool(response) and response[0] == answer


def proactive_correct(last_s: float, content: str, gt_s: float, gt_output: str) -> tuple[bool, bool]:
    """count.py's proactive rules: ``(on time, on time and said)``, where on time is
    ``-2 <= last_s - gt_s <= 2`` (seconds; ``last_s`` is the time of the record's last dialog
    turn) and said is ``gt_output in content`` (that turn's content)."""
    on_time = -PROACTIVE_TOLERANCE_S <= last_s - gt_s <= PROACTIVE_TOLERANCE_S
    return on_time, on_time and gt_output in content


@dataclass
class SBScore:
    """Official StreamingBench counts (``count.py``).

    Attributes:
        tasks: task_type -> ``(total, correct)`` for real-time questions.
        proactive: ``(total, time_correct, answer_correct)``, or None when not scored.
        unanswered: real-time questions without a response (``None``, ``""`` or
            :data:`NO_RESPONSE`); they are in ``tasks`` and scored wrong.
        proactive_unanswered: proactive questions the model never spoke in (``answered`` false);
            they are in ``proactive`` and scored wrong by the time rule.
    """

    tasks: dict[str, tuple[int, int]] = field(default_factory=dict)
    proactive: tuple[int, int, int] | None = None
    unanswered: int = 0
    proactive_unanswered: int = 0

    @property
    def total(self) -> tuple[int, int]:
        """``(total, correct)`` over all real-time questions (count.py's ``total`` row)."""
        return sum(t for t, _ in self.tasks.values()), sum(c for _, c in self.tasks.values())

    def report(self, model: str):
        """A rich renderable: a table in the leaderboard's layout (the real-time tasks in its
        column order, then the group's overall accuracy, then proactive output, in percent),
        and a line with how many questions went unanswered (counted as wrong)."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"StreamingBench: {model} (accuracy %, questions in brackets)")
        cells = []
        for name, short in REAL_TIME_TASKS.items():
            if name in self.tasks:
                table.add_column(short, justify="right")
                cells.append(_pct(*self.tasks[name]))
        for name in sorted(set(self.tasks) - set(REAL_TIME_TASKS)):
            table.add_column(name, justify="right")
            cells.append(_pct(*self.tasks[name]))
        if self.tasks:
            table.add_column("Real-Time All", justify="right")
            cells.append(_pct(*self.total))
        if self.proactive is not None:
            n, time_ok, answer_ok = self.proactive
            table.add_column("Proactive (time)", justify="right")
            table.add_column("Proactive (time+answer)", justify="right")
            cells += [_pct(n, time_ok), _pct(n, answer_ok)]
        table.add_row(*cells)
        unanswered = []
        if self.tasks:
            unanswered.append(f"real-time: {self.unanswered} of {self.total[0]} unanswered")
        if self.proactive is not None:
            unanswered.append(f"proactive: {self.proactive_unanswered} of {self.proactive[0]} unanswered")
        return Group(table, Text("; ".join(unanswered) + " (scored as wrong)")) if unanswered else table


def _pct(total: int, correct: int) -> str:
    return f"{100 * correct / total:.2f} ({total})" if total else "- (0)"


def score(real: list[dict] | None, proactive: list[dict] | None, model: str) -> SBScore:
    """Score output files (their parsed JSON) as ``count.py`` does, with silence as wrong (see
    the module docstring). Questions without the model's key are not counted, as in count.py.

    Raises:
        RowError: a question's record is malformed (names the entry and question).
    """
    out = SBScore()
    tasks: dict[str, list[int]] = {}
    for e, entry in enumerate(real or []):
        for q, question in enumerate(entry["questions"]):
            if model not in question:
                continue
            response = question[model]
            if (response is not None and not isinstance(response, str)) or not all(
                isinstance(question.get(k), str) for k in ("task_type", "answer")
            ):
                raise RowError(f"[{e}].questions[{q}]", "a real-time record needs 'task_type', 'answer' and "
                               f"the response (strings); the response is {response!r}")  # fmt: skip
            counts = tasks.setdefault(question["task_type"], [0, 0])
            counts[0] += 1
            counts[1] += real_time_correct(response, question["answer"])
            out.unanswered += response in (None, "", NO_RESPONSE)
    out.tasks = {k: (v[0], v[1]) for k, v in tasks.items()}
    if proactive is not None:
        n = time_ok = answer_ok = 0
        for e, entry in enumerate(proactive):
            for q, question in enumerate(entry["questions"]):
                if model not in question:
                    continue
                record = question[model]
                where = f"[{e}].questions[{q}]"
                try:
                    last = record["dialog_history"][-1]
                    gt = parse_timestamp(question["ground_truth_time_stamp"], where)
                    on_time, said = proactive_correct(
                        last["time"], last["content"] or "", gt, question["ground_truth_output"]
                    )
                    silent = not record.get("answered")
                except (KeyError, IndexError, TypeError, AttributeError) as err:
                    raise RowError(where, f"malformed proactive record: {err!r}") from None
                n += 1
                time_ok += on_time
                answer_ok += said
                out.proactive_unanswered += silent
        out.proactive = (n, time_ok, answer_ok)
    return out


@register_benchmark("streamingbench")
class StreamingBench(Benchmark):
    """StreamingBench in the harness: annotations ``questions_real.json`` and/or
    ``questions_proactive.json`` (told apart by their questions: proactive ones carry
    ``ground_truth_output``), output files ``<kind>_output_<name>.json``, scored by
    :func:`score`. A row's kind is ``row.meta["kind"]``."""

    def convert_file(self, path: str, video_root: str | None) -> ConvertReport:
        return read_source(f"streamingbench-{file_kind(load_questions(path))}", path, video_root)

    def item_score(self, row: StreamRow, prediction: Prediction) -> float:
        """count.py's rule for the row's kind: real-time by :func:`real_time_correct`, proactive
        by the answer accuracy of :func:`proactive_correct`; silence is wrong (0)."""
        p = prediction
        if row.meta["kind"] == "proactive":
            if p.response is None:
                return 0.0
            return float(proactive_correct(p.response_s, p.response, p.answer_time_s, p.ground_truth)[1])
        return float(real_time_correct(p.response, p.ground_truth))

    def write_results(self, anno: list[str], rows: list[StreamRow], preds: dict[str, list[Prediction]],
                      out_dir: Path, model_name: str) -> list[Path]:  # fmt: skip
        """One output file per annotation file: the annotation with the model's key added to
        each evaluated question (as StreamingBench's ``eval.py``). A real-time question without
        a response is written as :data:`NO_RESPONSE` (count.py raises on ``""``), a proactive
        one with its silent polls up to ground truth + 4 s."""
        by_key = {(r.meta["kind"], r.meta["entry"], r.meta["question"]): r for r in rows}
        written = []
        for src in anno:
            data = load_questions(src)
            kind = file_kind(data)
            for e, entry in enumerate(data):
                for q, question in enumerate(entry["questions"]):
                    row = by_key.get((kind, e, q))
                    if row is None:
                        continue
                    (p,) = preds[row.id]
                    if kind == "real":
                        question[model_name] = p.response or NO_RESPONSE
                    else:
                        polls = list(p.polls) or [(p.answer_time_s + PROACTIVE_GRACE_S, "")]
                        question[model_name] = proactive_record(polls, p.response_s)
            path = out_dir / f"{kind}_output_{model_name}.json"
            path.write_text(json.dumps(data, indent=4))
            written.append(path)
        return written

    def official_score(self, files: list[Path], model_name: str):
        """:func:`score` of the ``real_output_*`` and ``proactive_output_*`` files among
        ``files`` (the first of each), and its report."""
        data = {kind: next((json.loads(f.read_text()) for f in files if f.name.startswith(f"{kind}_")), None)
                for kind in KINDS}  # fmt: skip
        result = score(data["real"], data["proactive"], model_name)
        scores = {"tasks": {k: {"total": n, "correct": c} for k, (n, c) in result.tasks.items()},
                  "real_time_total": dict(zip(("total", "correct"), result.total, strict=True)),
                  "proactive": None if result.proactive is None else
                  dict(zip(("total", "time_correct", "answer_correct"), result.proactive, strict=True)),
                  "unanswered": result.unanswered, "proactive_unanswered": result.proactive_unanswered}  # fmt: skip
        return scores, result.report(model_name)

    def score_results_dir(self, results_dir: str | Path, model_name: str | None):
        """The scores of ``real_output_*.json`` and/or ``proactive_output_*.json`` in
        ``results_dir`` (one of each at most); ``model_name`` defaults to the files' model key
        (:func:`find_model_key`).

        Raises:
            ConfigError: no output file, or several of one kind.
            RowError: a file is malformed, or the model key cannot be told.
        """
        d = Path(results_dir)
        files = {kind: sorted(d.glob(f"{kind}_output_*.json")) for kind in KINDS}
        if not any(files.values()):
            raise ConfigError(
                f"{d}: no StreamingBench output files (real_output_*.json, proactive_output_*.json)"
            )
        for kind, found in files.items():
            if len(found) > 1:
                raise ConfigError(f"{d}: several {kind}_output_*.json files; keep one per folder")
        found = [f for kind in KINDS for f in files[kind]]
        return self.official_score(found, model_name or find_model_key(json.loads(found[0].read_text())))
