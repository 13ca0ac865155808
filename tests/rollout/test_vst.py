"""VST's memory and protocol (``rollout/vst.py``) and its recipe (``recipes/vst_rl.yaml``) end to end.

VST's prompts are rebuilt here as VST's code builds them (1ranGuan/VST b6f4490,
``VST-RL/recurrent/impls/video_memory.py`` with ``prompt_type="type1"``, ``run.sh`` l. 29; "l." is a
line of that file unless another is named): its templates verbatim, ``chat_template_v2``
(``VST-RL/recurrent/utils.py`` l. 126) on the tiny model's processor, ``str.format`` (l. 328-329)
and ``TokenTemplate``'s fill of ``{Name}`` keys (``utils.py`` l. 66-67, 96-112); ours must decode to
exactly that text.
"""

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoProcessor

import streamreason.recipes
import streamreason.rl.trainer as trainer_module
from streamreason.cli import main
from streamreason.config import load_config
from streamreason.envs.pool import EnvPool
from streamreason.envs.stream import EnvConfig
from streamreason.envs.synthetic import SynthObject, write_video
from streamreason.rl.metrics import read_metrics
from streamreason.rl.rows import build_rows
from streamreason.rollout.chat import ChatEncoder
from streamreason.rollout.engine import TransformersEngine
from streamreason.rollout.loop import RolloutConfig, run_rollouts
from streamreason.rollout.memory import MemoryConfig, get_memory, make_memory
from streamreason.rollout.protocol import ProtocolConfig, get_protocol
from streamreason.rollout.vst import VSTMemory, VSTProtocol
from streamreason.stack import max_videos
from streamreason.types import Query, StreamRow

RECIPE = str(Path(streamreason.recipes.__file__).parent / "vst_rl.yaml")

# video_memory.py l. 283, 295-300, 309-311, verbatim
TEMPLATE_TYPE_1 = """{TimeStamp} {VideoClip}"""
TEMPLATE_FINAL_BOXED_TYPE_1 = """{TimeStamp} {VideoClip}
{EndTime} Based on the provided Video Memory and the Current Video Clip, answer the following Problem.
{PromptFinal}
Output the final answer in \\boxed{{}}.
Your answer:
"""
MEMORY_PROMPT = """[System]
You are a Streaming Video Analyst.
{memory}"""


def vst_prompt(processor, final: bool, **fields: str) -> str:
    """The text of VST's prompt for one turn, from its templates filled with ``fields``."""
    chat = processor.apply_chat_template(
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "previous text", "content": "{previous}"}, {"role": "user", "content": "{message}"}],
        add_generation_prompt=True, tokenize=False,
    )  # fmt: skip
    template = chat.format(
        message=TEMPLATE_FINAL_BOXED_TYPE_1 if final else TEMPLATE_TYPE_1, previous=MEMORY_PROMPT
    )
    return re.sub(r"\{([a-zA-Z]+)\}", lambda m: fields[m.group(1)], template)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return ChatEncoder(AutoProcessor.from_pretrained(tiny_model_dir), get_protocol("vst"))


def test_a_recipe_names_the_vst_memory_and_protocol():
    cfg = load_config(RECIPE, ["model=m", "data.train=a"])
    assert cfg.rollout.memory.policy is VSTMemory and isinstance(get_protocol("vst"), VSTProtocol)
    assert get_memory("vst") is VSTMemory and max_videos(cfg) == 1
    assert [cfg.rollout.memory.video_cutoff(t) for t in range(4)] == [0, 1, 2, 3]
    assert [cfg.rollout.memory.block_start(t) for t in range(4)] == [0, 1, 2, 3]
    rl, optim = cfg.rl, cfg.optim
    assert (rl.norm_adv_by_std, rl.kl_coef, optim.lr, optim.freeze_vision) == (False, 0.01, 5e-7, True)
    rollout = cfg.rollout
    assert (rollout.sampling.top_p, rollout.protocol.max_new_tokens, rollout.group_size) == (0.98, 1000, 8)
    assert cfg.rewards.weights["vst_correctness"] == 1.0 and sum(cfg.rewards.weights.values()) == 1.0


def test_each_prompt_is_system_text_memory_and_the_current_clip_as_vst_builds_it(encoder):
    tok = encoder.tokenizer
    mem = make_memory(MemoryConfig(name="vst"), encoder.system_ids)
    question = Query("What is in the box?\nA. cat\nB. dog", 7.0, "B", 7.0)
    replies = ["a red square appears", "it moves left, \\boxed{maybe}", "\\boxed{B}"]
    memory_text = ""
    for k, (start, end) in enumerate([(0.0, 3.0), (3.0, 6.0), (6.0, 9.0)]):
        queries = [question] if k == 2 else []
        head, tail = encoder.user_turn(start, end, queries)
        video = encoder.video(np.full((2, 56, 56, 3), 40 * k, np.uint8), fps=2 / 3)
        mem.add_chunk(head, video, tail, has_query=bool(queries))
        prompt = mem.prompt()
        assert prompt.video_chunks == [k] and prompt.videos[0] is video and prompt.block_start == k
        assert prompt.mm_token_type_ids.count(0) == len(prompt.ids) - video.visual_tokens
        fields = {
            "TimeStamp": f"Time={start:.1f}-{end:.1f}s",
            "VideoClip": tok.decode(video.ids),
            "memory": memory_text,
        }
        if k == 2:  # the final turn (l. 463-466): EndTime and the problem
            fields.update(EndTime=f"Time={question.time_s:.1f}s", PromptFinal=question.text)
        assert tok.decode(prompt.ids) == vst_prompt(encoder.processor, k == 2, **fields)
        ended = k != 1  # turn 1 is cut by max_new_tokens: no end-of-turn token of its own
        generated = encoder.text(replies[k]) + ([encoder.end_of_turn_id] if ended else [])
        mem.add_reply(generated + encoder.end_of_turn(ended))
        # update, l. 565: time stamp (through the space before the clip), response without eos, "\n"
        memory_text += f"{fields['TimeStamp']} {replies[k]}\n"
    assert "\\boxed{{}}" in tok.decode(prompt.ids)  # VST's doubled braces (module docstring)


def test_the_text_memory_is_spliced_in_by_token_ids(encoder):
    mem = VSTMemory(MemoryConfig(name="vst"), encoder.system_ids)
    video = encoder.video(np.zeros((2, 56, 56, 3), np.uint8), fps=1.0)
    head, tail = encoder.user_turn(0.0, 2.0, [])
    mem.add_chunk(head, video, tail)
    first = mem.prompt().ids
    assert first == encoder.system_ids + head + video.ids + tail
    reply = [11, 12, encoder.end_of_turn_id, *encoder.end_of_turn(True)]
    mem.add_reply(reply)
    head2, tail2 = encoder.user_turn(2.0, 4.0, [])
    mem.add_chunk(head2, video, tail2)
    stamp = encoder.text("Time=0.0-2.0s ")
    second = mem.prompt()
    entry = [*stamp, 11, 12, *encoder.newline_ids]
    system = encoder.system_ids
    assert second.ids == [*system[:-2], *entry, *system[-2:], *head2, *video.ids, *tail2]
    # shared with the previous prompt: the system turn and the previous-text opening, up to the memory
    assert second.stats.shared_prefix_tokens == len(encoder.system_ids) - 2
    with pytest.raises(RuntimeError, match="add_reply"):
        mem.add_chunk(head2, video, tail2)


def test_the_final_turn_asks_for_a_boxed_answer_and_the_parser_reads_it():
    vst = get_protocol("vst")
    asked = vst.query_text(Query("How many?", 61.5, "3", 61.5))
    assert asked == (
        "\nTime=61.5s Based on the provided Video Memory and the Current Video Clip, answer the following "
        "Problem.\nHow many?\nOutput the final answer in \\boxed{{}}.\nYour answer:\n"
    )
    assert vst.chunk_header(31.0, 62.0) == "Time=31.0-62.0s "
    final = vst.parse("The dog stays. \\boxed{\\frac{1}{2}}")
    assert (final.action, final.response, final.think, final.format_ok) == (
        "response",
        "\\frac{1}{2}",
        "The dog stays.",
        True,
    )
    thought = vst.parse("A dog enters from the left.")
    assert (thought.action, thought.response, thought.think) == (
        "silent",
        None,
        "A dog enters from the left.",
    )
    assert vst.parse("\\boxed{A} or \\boxed{B}").response == "B"  # the last box
    assert not vst.parse("A dog", ended=False).format_ok and not vst.parse("  ").format_ok
    assert vst.parse(vst.render("a dog", "response", "B")) == final.__class__("response", "a dog", "B", True)
    assert vst.render(None, "silent") == ""


def _write_videos(root: Path, n: int, seconds: int) -> list[str]:
    (root / "videos").mkdir(parents=True)
    names = []
    for i in range(n):
        square = SynthObject("red", "square", 0, seconds, 24, 20 + 10 * i, 40, 90, 60)
        write_video(root / "videos" / f"{i}.mp4", [square], seconds, size=112, fps=10)
        names.append(f"videos/{i}.mp4")
    return names


ENV = EnvConfig(chunk_seconds=2.0, frames_per_chunk=2, min_pixels=56 * 56, max_pixels=112 * 112, max_chunks=5)


def test_rollouts_give_one_training_row_per_turn(tmp_path, tiny_policy):
    (video,) = _write_videos(tmp_path, 1, 5)
    row = StreamRow("vst-0", str(tmp_path / video), [Query("Is it red?", 5.0, "yes", 5.0)],
                    meta={"data_source": "yes or no"})  # fmt: skip
    model, processor = tiny_policy
    encoder = ChatEncoder(processor, get_protocol("vst"))
    cfg = RolloutConfig(env=ENV, memory=MemoryConfig(name="vst"),
                        protocol=ProtocolConfig(name="vst", think_budget=0, max_new_tokens=6), group_size=2)  # fmt: skip
    with EnvPool(ENV, in_process=True) as pool:
        trajs, failures = run_rollouts([row], pool=pool, engine=TransformersEngine(model, processor.tokenizer, seed=0),
                                       encoder=encoder, cfg=cfg)  # fmt: skip
    assert not failures and len(trajs) == 2
    eos = encoder.end_of_turn_id
    for traj in trajs:
        assert [t.chunk_index for t in traj.turns] == [0, 1, 2]  # ceil(5 s / 2 s)
        memory: list[int] = []
        for k, turn in enumerate(traj.turns):
            video = traj.videos[k]
            assert turn.video_chunks == [k] and turn.block_start == k
            assert (turn.mm_token_type_ids != 0).sum() == video.visual_tokens
            head, tail = encoder.user_turn(*turn.window_s, row.queries if k == 2 else [])
            system = encoder.system_ids
            assert turn.prompt_ids.tolist() == [*system[:-2], *memory, *system[-2:], *head, *video.ids, *tail]
            stamp = encoder.text(encoder.protocol.chunk_header(*turn.window_s))
            memory += stamp + [t for t in [*turn.response_ids.tolist(), *turn.env_ids] if t != eos]
    rows = build_rows(trajs, [0.5, -0.5])
    assert [(r.traj_index, r.turns, r.advantage) for r in rows] == [
        (i, (k, k), adv) for i, adv in enumerate([0.5, -0.5]) for k in range(3)
    ]


def _vst_parquet(path: Path, videos: list[str], duration: float) -> None:
    """Rows in VST's RL parquet layout, as ``tests/evals/test_convert.py`` builds them."""
    schema = pa.schema([("data_source", pa.string()), ("prompt", pa.string()), ("question", pa.string()),
                        ("video_context", pa.string()),
                        ("reward_model", pa.struct([("ground_truth", pa.list_(pa.string())), ("style", pa.string())])),
                        ("extra_info", pa.struct([("duration", pa.float64()), ("origin_id", pa.string())]))])  # fmt: skip
    kinds = [("multiple choice", "Which colour?\nA. red\nB. blue", "A."), ("yes or no", "Is it red?", "Yes")]
    rows = [{"data_source": source, "prompt": f"{prompt}\nOutput the final answer in \\boxed{{}}.", "question": prompt,
             "video_context": video, "reward_model": {"ground_truth": [gt], "style": "rule"},
             "extra_info": {"duration": duration, "origin_id": f"vst-{i}"}}
            for i, (video, (source, prompt, gt)) in enumerate(zip(videos, kinds))]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_the_recipe_trains_on_converted_vst_rows(tmp_path, tiny_model_dir, monkeypatch):
    videos = _write_videos(tmp_path, 2, 5)
    _vst_parquet(tmp_path / "train.parquet", videos, duration=5.0)
    rows = tmp_path / "rows.jsonl"
    main(["data", "convert", "--from", "vst", str(tmp_path / "train.parquet"), str(rows)])
    built = []

    def spy(trajectories, advantages=None):
        out = build_rows(trajectories, advantages)
        built.append((trajectories, advantages, out))
        return out

    monkeypatch.setattr(trainer_module, "build_rows", spy)
    run = tmp_path / "run"
    main(["train", RECIPE, f"model={tiny_model_dir}", f"data.train={rows}", "trainer.steps=2",  # no eval split
          f"trainer.run_dir={run}", "trainer.rows_per_step=2", "trainer.eval_samples=1", "trainer.eval_every=0",
          "trainer.tensorboard=false", "rollout.group_size=2", "rollout.protocol.max_new_tokens=6",
          "rollout.env.chunk_seconds=2.0", "rollout.env.frames_per_chunk=2", "rollout.env.min_pixels=3136",
          "rollout.env.max_pixels=12544", "env_pool.in_process=true", "engine.device=cpu", "engine.dtype=float32",
          "optim.dtype=float32", "optim.gradient_checkpointing=false", "rl.mini_batches=1", "rl.micro_batch_rows=4"])  # fmt: skip
    steps = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in steps] == [1, 2] and not any(k.startswith("eval/") for r in steps for k in r)
    assert all(r["reward_failed"] == 0 and "reward/vst_correctness" in r for r in steps), steps
    assert (run / "final" / "model.safetensors").is_file()
    assert len(built) == 2
    for trajs, advantages, out in built:
        assert len(trajs) == 4 and all(
            len(t.turns) == 3 for t in trajs
        )  # 2 rows x G=2, ceil(5 s / 2 s) turns
        assert [(r.traj_index, r.turns, r.advantage) for r in out] == [
            (i, (k, k), advantages[i]) for i in range(4) for k in range(3)
        ]
        for i in range(0, 4, 2):  # r - group mean: a group's advantages sum to 0
            assert advantages[i] + advantages[i + 1] == pytest.approx(0.0)
