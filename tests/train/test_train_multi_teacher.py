"""Several teachers in one run: each prompt goes to the teacher its task routes to, each
teacher scores on its own stream through its own tokenizer bridge, metrics come per
teacher and per task, a teacher that dies delays only its own prompts, and bad routing
stops the start with a line that names the prompt or the teacher.

Teacher `same` is the tiny teacher (the student's own tokenizer: identity bridge);
teacher `cross` is the cross-tokenizer student's model served as a teacher, so its
bridge re-tokenizes. The in-process run wraps `TeacherSession.submit_all` to record what
each teacher was asked, the way a fake teacher would."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from processes import free_port, start_teacher, start_trainer, stop, wait_until
from transformers import AutoTokenizer

from opd_client.train import pipeline
from opd_client.train.checkpoint import find_latest
from opd_client.train.config import ConfigError
from opd_client.train.config_load import load_config
from opd_client.train.loop import train
from opd_client.train.metrics import read_metrics

MakeConfig = Callable[..., Path]  # the `make_config` fixture of tests/train/conftest.py

pytestmark = pytest.mark.slow
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
PROMPTS = [
    {"prompt": "the teacher adds", "task": "words"},
    {"prompt": "count to 5", "task": "count"},
    {"prompt": "1 2 3", "task": "count"},
    {"prompt": "a cat and a dog", "task": "words"},
    {"prompt": "route me by name", "teacher": "cross"},
    {"prompt": "no task at all"},
]
ROUTED = {0: "same", 1: "cross", 2: "cross", 3: "same", 4: "cross", 5: "same"}


@pytest.fixture(scope="module")
def cross_teacher(cross_tok_student: Path) -> Iterator[str]:
    port = free_port()
    process = start_teacher(cross_tok_student, port, "--max-batch-sequences", "1", env=ONE_THREAD)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


def _prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def _teachers(same: str, cross: str, **extra: object) -> list[dict[str, object]]:
    return [
        {"name": "same", "address": same, "top_k": 8, "tasks": ["words"], "timeout_s": 5},
        {"name": "cross", "address": cross, "top_k": 8, "tasks": ["count"], "timeout_s": 5},
    ]


def test_prompts_go_to_their_teachers_through_their_own_bridges(
    make_config: MakeConfig,
    teacher_address: str,
    cross_teacher: str,
    tiny_teacher_dir: Path,
    cross_tok_student: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_config(
        make_config(
            run_dir=tmp_path / "run",
            prompts=str(_prompts(tmp_path / "p.jsonl")),
            teachers=_teachers(teacher_address, cross_teacher),
            default_teacher="same",
            prompts_per_step=6,
            max_steps=3,
            rollout__batch_size=3,
        )
    )
    asked: dict[str, list[list[int]]] = {teacher_address: [], cross_teacher: []}
    real = pipeline.TeacherSession.submit_all

    def recording(self, requests):  # type: ignore[no-untyped-def]
        address = ",".join(self.addresses)
        asked[address] += [list(r["token_ids"]) for r in requests]
        return real(self, requests)

    monkeypatch.setattr(pipeline.TeacherSession, "submit_all", recording)
    train(config)

    tokenizers = {
        teacher_address: AutoTokenizer.from_pretrained(tiny_teacher_dir),
        cross_teacher: AutoTokenizer.from_pretrained(cross_tok_student),
    }
    names = {teacher_address: "same", cross_teacher: "cross"}
    for address, sequences in asked.items():
        assert len(sequences) == 3 * sum(1 for t in ROUTED.values() if t == names[address])
        for ids in sequences:
            text = tokenizers[address].decode(ids)
            owners = {ROUTED[i] for i, p in enumerate(PROMPTS) if p["prompt"] in text}
            assert owners == {names[address]}, (names[address], text)

    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records:
        same, cross = r["teachers"]["same"], r["teachers"]["cross"]
        assert same["responses"] == 3 and cross["responses"] == 3
        assert same["aligned_fraction"] == 1.0  # identity bridge: every position aligns
        assert cross["positions"] > 0 and 0 < cross["aligned_fraction"] <= 1.0
        for entry in (same, cross):
            for key in ("loss", "rkl_support", "student_mass", "teacher_mass", "overlap_ratio"):
                assert key in entry, key
        assert set(r["tasks"]) == {"words", "count"}
        assert r["tasks"]["words"]["responses"] == 2 and r["tasks"]["count"]["responses"] == 2
    state = find_latest(tmp_path / "run" / "checkpoints").state  # type: ignore[union-attr]
    assert set(state["teacher_fingerprints"]) == {"same", "cross"}


def test_one_teacher_killed_mid_run_delays_only_its_prompts(
    make_config: MakeConfig,
    tiny_teacher_dir: Path,
    cross_tok_student: Path,
    teacher_address: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    cross = f"127.0.0.1:{port}"
    config = make_config(
        run_dir=tmp_path / "run",
        prompts=str(_prompts(tmp_path / "p.jsonl")),
        teachers=_teachers(teacher_address, cross),
        default_teacher="same",
        prompts_per_step=6,
        max_steps=14,
        requeue_after_s=1.0,
        teacher_unavailable_timeout_s=120,
        checkpoint__interval=7,
    )
    teacher = start_teacher(cross_tok_student, port, "--max-batch-sequences", "1", env=ONE_THREAD)
    log = tmp_path / "trainer.log"
    trainer = start_trainer(config, log, env=ONE_THREAD)
    try:
        wait_until(lambda: len(read_metrics(tmp_path / "run")) >= 3, trainer, log)
        teacher.send_signal(signal.SIGKILL)
        teacher.wait()
        requeued = lambda: any(r["requeued"] for r in read_metrics(tmp_path / "run"))  # noqa: E731
        wait_until(requeued, trainer, log)
        time.sleep(2.0)  # the other teacher's prompts go on training meanwhile
        teacher = start_teacher(
            cross_tok_student, port, "--max-batch-sequences", "1", env=ONE_THREAD
        )
        assert trainer.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        if trainer.poll() is None:
            trainer.kill()
        stop(teacher)

    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(14))
    down = [r for r in records if r["teachers"]["cross"]["responses"] == 0]
    assert down, "some step trained without the killed teacher"
    assert all(r["teachers"]["same"]["responses"] > 0 for r in down)  # the other went on
    assert sum(r["requeued"] for r in records) > 0
    # No prompt lost: every prompt drawn was trained once its teacher was back.
    trained = sum(
        r["teachers"]["same"]["responses"] + r["teachers"]["cross"]["responses"] for r in records
    )
    assert records[-1]["queued"] == 0
    assert trained == records[-1]["data_position"]
    assert "go back in the queue" in (tmp_path / "trainer.log").read_text()


def test_bad_routing_stops_the_start_naming_the_line_or_teacher(
    make_config: MakeConfig, teacher_address: str, cross_teacher: str, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl")
    teachers = _teachers(teacher_address, cross_teacher)
    no_default = load_config(
        make_config(run_dir=tmp_path / "a", prompts=str(prompts), teachers=teachers)
    )
    with pytest.raises(ConfigError, match=r"p.jsonl line 6: task None has no teacher"):
        train(no_default)

    twins = [dict(teachers[0]), dict(teachers[1], name="same", tasks=["count"])]
    with pytest.raises(ConfigError, match=r"teachers\[1\].name: two teachers are named 'same'"):
        load_config(make_config(run_dir=tmp_path / "b", prompts=str(prompts), teachers=twins))

    greedy = [teachers[0], dict(teachers[1], top_k=100_000 // 40)]
    too_big = load_config(
        make_config(
            run_dir=tmp_path / "c", prompts=str(prompts), teachers=greedy, default_teacher="same"
        )
    )
    with pytest.raises(ConfigError, match=r"teachers\[1\] \(cross\).top_k: 2500 > the teacher's"):
        train(too_big)

    unknown = tmp_path / "u.jsonl"
    unknown.write_text(json.dumps({"prompt": "x", "teacher": "nobody"}) + "\n")
    bad_name = load_config(
        make_config(run_dir=tmp_path / "d", prompts=str(unknown), teachers=teachers)
    )
    with pytest.raises(ConfigError, match=r"u.jsonl line 1: teacher 'nobody' is not one of"):
        train(bad_name)
    assert not any((tmp_path / d).exists() for d in "abcd")  # nothing written
