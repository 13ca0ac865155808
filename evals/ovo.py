"""OVO-Bench (github.com/JoeLeelyf/OVO-Bench, current edition): annotations to streams, result
files, the official scorer, and the registered benchmark :class:`OVOBench` (``--benchmark ovo``,
``data convert --from ovo``).

Source of every rule here, by file of the upstream repository:

* ``constant.py``: the task lists and the four prompt templates (copied verbatim below).
* ``utils/OVOBench.py`` ``build_prompt``: options as ``"A. x; B. y;"``; REC asks
  ``"How many times did they <activity>?"``; SSR gives the probe's ``step``; CRR the question.
* ``utils/chunk_videos.py``: a question sees the video ``[0, min(ceil(realtime), duration)]``;
  every forward ``test_info`` probe is its own question at its ``realtime``.
* ``utils/OVOBench.py`` ``eval``: the result file ``{"backward": [...], "realtime": [...],
  "forward": [...]}``; backward/realtime entries ``{id, video, task, question, response,
  ground_truth}``; forward entries are the annotation with ``response`` added to each probe.
* ``utils/OVOBenchScore.py`` ``OVOBenchOfflineScore``: multiple choice scores ``gt in
  response``; REC joins the response's digit runs and compares with ``str(count)``; SSR/CRR
  accept exactly ``"N"``/``"Y"`` or the substring ``"No"``/``"Yes"`` (case-sensitive); a
  ``None`` response scores 0. Task accuracy is over questions (forward: over probes), a
  category's average is the mean of its tasks' accuracies, and the total is the mean of the three
  category averages. It prints the backward, real-time and forward blocks in that order (the
  tasks within a block in ``constant.py``'s order here; see :meth:`OVOScore.report`).

As streams: a backward or real-time question is one row that stops at ``ceil(realtime)`` with
the question asked at ``realtime``; a forward entry is a multi-query stream with one query per
probe, stopping at its last probe. Probes that fall in the same second go to separate streams
(``ovo-<id>-<k>``), so each gets its own turn. Each row's ``meta`` holds the entry's ``ovo_id``,
its ``category`` and, for forward streams, the ``probes`` it asks, which the result file is
written from.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamreason.envs.convert import ConvertReport, read_json, read_source, register_format
from streamreason.errors import RowError
from streamreason.evals.registry import Benchmark, Prediction, register_benchmark
from streamreason.types import Query, StreamRow, finite_float

BACKWARD_TASKS = ["EPM", "ASI", "HLD"]
REAL_TIME_TASKS = ["OCR", "ACR", "ATR", "STU", "FPD", "OJR"]
FORWARD_TASKS = ["REC", "SSR", "CRR"]
CATEGORIES = {"backward": BACKWARD_TASKS, "realtime": REAL_TIME_TASKS, "forward": FORWARD_TASKS}
CATEGORY_TITLES = {
    "backward": ("Evaluate Backward Tracing...", "Backward Avg."),
    "realtime": ("Evaluate Real-time Visual Perception...", "Realtime Avg."),
    "forward": ("Evaluate Forward Active Responding...", "Forward Avg."),
}

# constant.py, verbatim (trailing spaces, curly quotes and the ellipsis included)
BR_PROMPT_TEMPLATE = """
Question: {}
Options:
{}

Respond only with the letter corresponding to your chosen option (e.g., A, B, C). 
Do not include any additional text or explanation in your response.
"""  # noqa: W291
REC_PROMPT_TEMPLATE = """
You're watching a video in which people may perform a certain type of action repetively. 
The person performing this kind of action are referred to as 'they' in the following statement.
You're task is to count how many times have different people in the video perform this kind of action in total.
One complete motion counts as one. 
Now, answer the following question: {}
Provide your answer as a single number (e.g., 0, 1, 2, 3…) indicating the total count.
Do not include any additional text or explanation in your response.
"""  # noqa: W291, E501
SSR_PROMPT_TEMPLATE = """
You're watching a tutorial video which contain a sequential of steps. 
The following is one step from the whole procedures: 
{}
Your task is to determine if the man or woman in the video is currently performing this step.
Answer only with “Yes” or “No”.
Do not include any additional text or explanation in your response.
"""  # noqa: W291
CRR_PROMPT_TEMPLATE = """
You're responsible of answering questions based on the video content. 
The following question are relevant to the latest frames, i.e. the end of the video.
{}
Decide whether existing visual content, especially latest frames, i.e. frames that near the end of the video, provide enough information for answering the question.
Answer only with “Yes” or “No”.
Do not include any additional text or explanation in your response.
"""  # noqa: W291, E501


def category_of(task: str) -> str:
    """``"backward"``, ``"realtime"`` or ``"forward"``.

    Raises:
        KeyError: not an OVO-Bench task.
    """
    for cat, tasks in CATEGORIES.items():
        if task in tasks:
            return cat
    raise KeyError(f"unknown OVO-Bench task {task!r}; expected one of {sum(CATEGORIES.values(), [])}")


def build_prompt(task: str, entry: dict, probe: int | None = None) -> str:
    """The official prompt of a question (``utils/OVOBench.py`` ``build_prompt``)."""
    if task in BACKWARD_TASKS or task in REAL_TIME_TASKS:
        options = "; ".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(entry["options"])) + ";"
        return BR_PROMPT_TEMPLATE.format(entry["question"], options)
    if task == "REC":
        return REC_PROMPT_TEMPLATE.format("How many times did they " + entry["activity"] + "?")
    if task == "SSR":
        return SSR_PROMPT_TEMPLATE.format(entry["test_info"][probe]["step"])
    return CRR_PROMPT_TEMPLATE.format(entry["question"])


def probe_answer(task: str, probe: dict) -> str:
    """A forward probe's ground truth: the count (REC) or ``"Yes"``/``"No"`` (SSR, CRR ``type``)."""
    return str(probe["count"]) if task == "REC" else ("Yes" if probe["type"] == 1 else "No")


def load_annotations(path: str | Path) -> list[dict]:
    """The annotation list of ``ovo_bench_new.json``.

    Raises:
        RowError: no such file, or it is not JSON or not a list of objects.
    """
    data = read_json(path)
    if not isinstance(data, list):
        raise RowError(Path(path).name, "expected a JSON list of OVO-Bench annotations")
    return data


def _check(entry: Any, where: str) -> str:
    if not isinstance(entry, dict):
        raise RowError(where, "expected an object")
    task = entry.get("task")
    try:
        category_of(task)
    except KeyError as e:
        raise RowError(where, str(e.args[0])) from None
    need = {"id": (int, str), "video": str}
    if task in FORWARD_TASKS:
        need["test_info"] = list
        need.update({"REC": {"activity": str}, "SSR": {}, "CRR": {"question": str}}[task])
    else:
        need.update(realtime=(int, float), question=str, options=list, gt=int)
    for key, typ in need.items():
        if not isinstance(entry.get(key), typ):
            raise RowError(where, f"{task} entry needs {key!r} ({typ})")
    if task in FORWARD_TASKS:
        probe_keys = {
            "REC": ("realtime", "count"),
            "SSR": ("realtime", "step", "type"),
            "CRR": ("realtime", "type"),
        }
        for j, p in enumerate(entry["test_info"]):
            if not isinstance(p, dict) or any(k not in p for k in probe_keys[task]):
                raise RowError(where, f"test_info[{j}] needs {probe_keys[task]}")
            if not _is_time(p["realtime"]):
                raise RowError(where, f"test_info[{j}].realtime must be seconds >= 0, got {p['realtime']!r}")
        if not entry["test_info"]:
            raise RowError(where, "empty test_info")
    elif not _is_time(entry["realtime"]):
        raise RowError(where, f"realtime must be seconds >= 0, got {entry['realtime']!r}")
    elif not 0 <= entry["gt"] < len(entry["options"]):
        raise RowError(where, f"gt {entry['gt']} is not an index of the {len(entry['options'])} options")
    return task


def _is_time(v: Any) -> bool:
    """A finite number of seconds >= 0 (not a bool)."""
    t = finite_float(v)
    return t is not None and t >= 0


def entry_rows(entry: dict, where: str) -> list[StreamRow]:
    """The streams of one annotation entry (see the module docstring).

    Row ``meta``: ``benchmark="ovo"``, ``ovo_id``, ``category``, and for forward streams
    ``probes`` (the ``test_info`` index of each query, in query time order).

    Raises:
        RowError: the entry is malformed (names ``where`` and the field).
    """
    task = _check(entry, where)
    cat = category_of(task)
    oid = entry["id"]
    if cat != "forward":
        t = float(entry["realtime"])
        q = Query(build_prompt(task, entry), t, chr(65 + entry["gt"]), t)
        meta = {"benchmark": "ovo", "ovo_id": oid, "category": cat}
        return [StreamRow(f"ovo-{oid}", entry["video"], [q], task=task, meta=meta, end_s=math.ceil(t) or 1)]
    order = sorted(range(len(entry["test_info"])), key=lambda j: float(entry["test_info"][j]["realtime"]))
    streams: list[list[int]] = []
    for j in order:  # first stream with no probe in the same second
        sec = math.floor(float(entry["test_info"][j]["realtime"]))
        target = next((s for s in streams if all(
            math.floor(float(entry["test_info"][i]["realtime"])) != sec for i in s)), None)  # fmt: skip
        if target is None:
            streams.append(target := [])
        target.append(j)
    rows = []
    for k, probes in enumerate(streams):
        queries = []
        for j in probes:
            t = float(entry["test_info"][j]["realtime"])
            queries.append(
                Query(build_prompt(task, entry, j), t, probe_answer(task, entry["test_info"][j]), t)
            )
        end = math.ceil(max(q.time_s for q in queries)) or 1
        rid = f"ovo-{oid}" if len(streams) == 1 else f"ovo-{oid}-{k}"
        meta = {"benchmark": "ovo", "ovo_id": oid, "category": cat, "probes": probes}
        rows.append(StreamRow(rid, entry["video"], queries, task=task, meta=meta, end_s=end))
    return rows


@register_format("ovo")
def read_annotations(path: Path) -> Iterator[tuple[str, list[StreamRow] | RowError]]:
    """Converter entry point (``data convert --from ovo``): each annotation entry's streams."""
    for i, entry in enumerate(load_annotations(path)):
        where = f"{path.name}[{i}]"
        try:
            yield where, entry_rows(entry, where)
        except RowError as e:
            yield where, e


def result_file(entries: list[dict], responses: dict[tuple[Any, int | None], str | None],
                video_dir: str = "") -> dict[str, list]:  # fmt: skip
    """The result JSON that OVO-Bench's ``inference.py`` writes, from model responses.

    Args:
        entries: annotation entries (those evaluated).
        responses: ``(id, None)`` -> the response to a backward/real-time question;
            ``(id, j)`` -> the response to forward probe ``j``. Absent keys are written as
            ``None`` (the official scorer counts them wrong).
        video_dir: joined before each entry's ``video``, as ``inference.py`` does.
    """
    out: dict[str, list] = {"backward": [], "realtime": [], "forward": []}
    for entry in entries:
        cat = category_of(entry["task"])
        video = str(Path(video_dir) / entry["video"]) if video_dir else entry["video"]
        if cat == "forward":
            probes = [
                {**p, "response": responses.get((entry["id"], j))} for j, p in enumerate(entry["test_info"])
            ]
            out[cat].append({**entry, "video": video, "test_info": probes})
        else:
            out[cat].append({"id": entry["id"], "video": video, "task": entry["task"],
                             "question": entry["question"], "response": responses.get((entry["id"], None)),
                             "ground_truth": chr(65 + entry["gt"])})  # fmt: skip
    return out


def load_results(results_dir: str | Path) -> dict[str, list]:
    """All result files of one model folder, concatenated (``score.py``).

    ``score.py`` reads every file of ``results/<model>/``; this reads every ``*.json`` file,
    in name order.

    Raises:
        RowError: the folder does not exist or holds no ``*.json`` file (naming the folder),
            or a file is not JSON or lacks the ``backward``/``realtime``/``forward`` lists.
    """
    d = Path(results_dir)
    files = sorted(d.glob("*.json")) if d.is_dir() else []
    if not files:
        raise RowError(str(d), "no OVO-Bench result files (*.json) there; pass the model's results folder")
    out: dict[str, list] = {"backward": [], "realtime": [], "forward": []}
    for f in files:
        data = read_json(f)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in out):
            raise RowError(
                f.name, "an OVO-Bench result file holds the lists 'backward', 'realtime', 'forward'"
            )
        for k in out:
            out[k] += data[k]
    return out


def score_choice(response: Any, gt: str) -> int:
    """Backward / real-time: 1 when the ground-truth letter occurs in the response."""
    return 0 if response is None else int(gt in response)


def score_rec(response: Any, count: Any) -> int:
    """REC: the response's digit runs joined (``"1, 2"`` -> ``"12"``) equal ``str(count)``.

    Raises:
        TypeError: ``response`` is neither None nor a string (the official scorer fails too).
    """
    if response is None:
        return 0
    if not isinstance(response, str):
        raise TypeError(f"REC response must be a string, got {type(response).__name__}: {response!r}")
    return int("".join(re.findall(r"\d+", response)) == str(count))


def score_yes_no(response: Any, probe_type: int) -> int:
    """SSR / CRR: exactly ``"N"`` (type 0) or ``"Y"`` (type 1), or ``"No"`` / ``"Yes"`` inside
    the response (case-sensitive)."""
    if (response == "N" and probe_type == 0) or (response == "Y" and probe_type == 1):
        return 1
    if response is None:
        return 0
    return int(("No" if probe_type == 0 else "Yes") in response)


@dataclass
class OVOScore:
    """Official OVO-Bench accuracies, in percent.

    Attributes:
        tasks: category -> task -> accuracy, the tasks in ``constant.py``'s order (then any
            other task, in first-seen order).
        counts: task -> number of scored questions (forward: probes).
        categories: category -> mean of its tasks' accuracies.
        total: mean of the category averages (None when no category was scored).
    """

    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    categories: dict[str, float] = field(default_factory=dict)
    total: float | None = None

    def report(self, model: str) -> str:
        """The scorer's printout (``utils/OVOBenchScore.py`` ``OVOBenchOfflineScore.score``),
        line for line: the backward, real-time and forward blocks in that order, as it prints
        them. Within a block the tasks follow ``constant.py``'s lists (EPM ASI HLD; OCR ACR ATR
        STU FPD OJR; REC SSR CRR); the official code prints them in the order it first meets
        them in the result files, which ``score.py`` reads in ``os.listdir`` order, and the
        forward ones in Python's set order, so its order varies between runs and folders."""
        lines = [f"Offline Model: {model}"]
        for cat, (title, avg) in CATEGORY_TITLES.items():
            if cat not in self.categories:
                continue
            lines.append(title)
            lines += [f"Task: {t}, Acc: {a:.2f}" for t, a in self.tasks[cat].items()]
            lines += [f"{avg}: {self.categories[cat]:.2f}", ""]
        if self.total is not None:
            note = "" if len(self.categories) == 3 else f" (over {len(self.categories)} of 3 categories)"
            lines.append(f"Total Avg.: {self.total:.2f}{note}")
        return "\n".join(lines)


def score(results: dict[str, list]) -> tuple[OVOScore, dict[str, list[int]]]:
    """Score result lists as ``OVOBenchOfflineScore.score`` does.

    Returns:
        ``(score, per_item)``: the accuracies, and task -> 0/1 per question (forward: per probe,
        in file order).

    Raises:
        RowError: an entry lacks the fields its category needs (names the entry's id).
    """
    per_task: dict[str, dict[str, list[int]]] = {c: {} for c in CATEGORIES}
    for cat in CATEGORIES:
        for i, r in enumerate(results.get(cat, [])):
            where = f"{cat}[{i}] (id {r.get('id') if isinstance(r, dict) else '?'})"
            try:
                task = r["task"]
                if cat == "forward":
                    for p in r["test_info"]:
                        if task == "REC":
                            s = score_rec(p["response"], p["count"])
                        else:
                            s = score_yes_no(p["response"], p["type"])
                        per_task[cat].setdefault(task, []).append(s)
                else:
                    per_task[cat].setdefault(task, []).append(score_choice(r["response"], r["ground_truth"]))
            except (KeyError, TypeError) as e:
                raise RowError(where, f"cannot score: {type(e).__name__}: {e}") from None
    out = OVOScore()
    for cat, tasks in per_task.items():
        if tasks:
            fractions = [sum(v) / len(v) for v in tasks.values()]  # the official arithmetic, in its order
            known = CATEGORIES[cat]
            order = sorted(tasks, key=lambda t: known.index(t) if t in known else len(known))  # stable
            out.tasks[cat] = {t: 100 * sum(tasks[t]) / len(tasks[t]) for t in order}
            out.counts.update({t: len(v) for t, v in tasks.items()})
            out.categories[cat] = 100 * sum(fractions) / len(fractions)
    if out.categories:
        out.total = sum(out.categories.values()) / len(out.categories)
    return out, {t: v for tasks in per_task.values() for t, v in tasks.items()}


@register_benchmark("ovo")
class OVOBench(Benchmark):
    """OVO-Bench in the harness: annotations ``ovo_bench_new.json`` (the first ``--anno`` file
    is the one the result file is written from), result file
    ``ovo/<name>/<name>_<tasks>_offline_1.json``, scored by :func:`score`."""

    def convert_file(self, path: str, video_root: str | None) -> ConvertReport:
        return read_source("ovo", path, video_root)

    def item_score(self, row: StreamRow, prediction: Prediction) -> float:
        """1/0 by the task's rule (:func:`score_rec`, :func:`score_yes_no`, :func:`score_choice`);
        no response is 0."""
        if row.task == "REC":
            return float(score_rec(prediction.response, prediction.ground_truth))
        if row.task in ("SSR", "CRR"):
            return float(score_yes_no(prediction.response, int(prediction.ground_truth == "Yes")))
        return float(score_choice(prediction.response, prediction.ground_truth))

    def write_results(self, anno: list[str], rows: list[StreamRow], preds: dict[str, list[Prediction]],
                      out_dir: Path, model_name: str) -> list[Path]:  # fmt: skip
        """The one result file of the evaluated entries (:func:`result_file`); a question
        without a response is written as ``None``, which the official scorer counts wrong."""
        responses: dict[tuple[Any, int | None], str | None] = {}
        ids = set()
        for row in rows:
            oid = row.meta["ovo_id"]
            ids.add(oid)
            probes = row.meta.get("probes")
            for p in preds[row.id]:
                responses[(oid, None if probes is None else probes[p.query])] = p.response
        entries = [e for e in load_annotations(anno[0]) if e.get("id") in ids]
        tasks = [
            t
            for t in BACKWARD_TASKS + REAL_TIME_TASKS + FORWARD_TASKS
            if any(e["task"] == t for e in entries)
        ]
        path = out_dir / "ovo" / model_name / f"{model_name}_{'_'.join(tasks)}_offline_1.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result_file(entries, responses), indent=4))
        return [path]

    def official_score(self, files: list[Path], model_name: str) -> tuple[dict, str]:
        """The scores of every result file in the folder of ``files[0]`` (as ``score.py``
        reads a model's folder), and the scorer's printout (:meth:`OVOScore.report`)."""
        return self.score_results_dir(files[0].parent, model_name)

    def score_results_dir(self, results_dir: str | Path, model_name: str | None) -> tuple[dict, str]:
        """The scores of every ``*.json`` in ``results_dir`` (OVO-Bench's ``results/<model>/``);
        ``model_name`` defaults to the folder's name.

        Raises:
            RowError: as :func:`load_results` and :func:`score`.
        """
        result, _ = score(load_results(results_dir))
        scores = {"tasks": result.tasks, "counts": result.counts, "categories": result.categories,
                  "total": result.total}  # fmt: skip
        return scores, result.report(model_name or Path(results_dir).name)
