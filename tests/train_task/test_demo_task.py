"""The demo task (`opd_client.train.task`) and the demo model builders (`demo_models`).

The builders run with a tiny step budget into tmp_path, so this file never touches the
model cache and stays fast; the full models' accuracy is reported by
`python -m opd_client.train.demo_models`, not tested here (a cold build takes minutes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from opd_client.train import task


def test_generation_is_deterministic_and_splits_are_disjoint(tmp_path: Path) -> None:
    train = task.make_records(2000, "train", seed=3)
    assert train == task.make_records(2000, "train", seed=3)
    heldout = task.make_records(300, "heldout", seed=3)
    pairs = {task.parse_prompt(r["messages"]) for r in train}
    held_pairs = {task.parse_prompt(r["messages"]) for r in heldout}
    assert len(pairs) == 2000 and len(held_pairs) == 300
    assert not pairs & held_pairs
    assert all(task.split_of(a, b) == "heldout" for a, b in held_pairs)
    # Other seeds draw other problems, still from the same side of the split.
    other = {task.parse_prompt(r["messages"]) for r in task.make_records(300, "heldout", seed=4)}
    assert other != held_pairs and not other & pairs
    r = train[0]
    assert set(r) == {"messages", "answer", "task"} and r["task"] == "addition"
    assert r["messages"][0]["role"] == "user"
    path = task.write_jsonl(train[:5], tmp_path / "sub" / "train.jsonl")
    assert task.read_jsonl(path) == train[:5]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (347, 86, "<think>7+6=13,4+8+1=13,3+0+1=4</think>433"),
        (999, 999, "<think>9+9=18,9+9+1=19,9+9+1=19</think>1998"),
        (905, 95, "<think>5+5=10,0+9+1=10,9+0+1=10</think>1000"),
        (12, 13, "<think>2+3=5,1+1=2</think>25"),
        (50, 50, "<think>0+0=0,5+5=10</think>100"),
        (86, 347, "<think>6+7=13,8+4+1=13,0+3+1=4</think>433"),
        (10, 990, "<think>0+0=0,1+9=10,0+9+1=10</think>1000"),
    ],
)
def test_reference_trace_edge_cases(a: int, b: int, expected: str) -> None:
    assert task.reference_solution(a, b) == expected


def test_reference_trace_is_correct_everywhere() -> None:
    for a in range(10, 1000, 7):
        for b in range(10, 1000, 13):
            steps = task.reasoning_trace(a, b).split(",")
            assert len(steps) == max(len(str(a)), len(str(b)))
            lows = [int(s.split("=")[1]) % 10 for s in steps]
            top = int(steps[-1].split("=")[1]) // 10
            digits = ([str(top)] if top else []) + [str(d) for d in reversed(lows)]
            assert "".join(digits) == str(a + b)


def test_verifier() -> None:
    record = task.make_record(347, 86)
    ref = task.reference_for(record)
    ok = [ref, ref + "<|im_end|>", ref + "</s>", ref + " \n", ref + "<|im_end|><|eos|>"]
    for response in ok:
        assert task.exact_match(record["messages"], response, "433"), response
    bad = [
        "<think>7+6=13</think>434",
        "433",  # no trace
        "<think>7+6=13433",  # unterminated
        "</think>433",  # no opening marker
        "<think>x</think>433 apples",
        "<think>x</think>",
        "<think>x</think>4 33",
        "<think>x</think>-433",
        "<think>x</think>0433",
    ]
    for response in bad:
        assert not task.exact_match(record["messages"], response, "433"), response
    assert task.extract_answer("<think>a</think>b</think>12") == "12"
    records = [record, task.make_record(1, 2)]
    assert task.accuracy(records, [ref, "<think></think>4"]) == 0.5
    assert task.accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        task.parse_prompt("What is up?")


def test_tokenizers_differ_and_round_trip() -> None:
    from opd_client.train import demo_models as dm

    teacher = dm.build_tokenizer(dm.TEACHER_TOKENIZER)
    student = dm.build_tokenizer(dm.STUDENT_TOKENIZER)
    assert teacher.get_vocab() == dm.build_tokenizer(dm.TEACHER_TOKENIZER).get_vocab()
    assert len(teacher) != len(student) and teacher.get_vocab() != student.get_vocab()
    assert "<think>" in teacher.get_added_vocab() and "<think>" not in student.get_added_vocab()
    record = task.make_record(347, 86)
    texts = {}
    for tok in (teacher, student):
        for text in (record["messages"][0]["content"], task.reference_for(record)):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids, skip_special_tokens=False) == text
        texts[id(tok)] = tok.apply_chat_template(
            record["messages"], add_generation_prompt=True, tokenize=False
        )
    assert texts[id(teacher)] != texts[id(student)]
    pieces = student.convert_ids_to_tokens(
        student(task.reference_for(record), add_special_tokens=False)["input_ids"]
    )
    assert pieces[:3] == ["<", "think", ">"]


@pytest.mark.slow
def test_builders_save_loadable_models(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opd_client.train import demo_models as dm

    records = task.make_records(4, "heldout")
    dirs = [
        dm.build_demo_teacher(tmp_path / "t", train_steps=2, eval_records=4),
        dm.build_demo_student(tmp_path / "c", "cross", train_steps=2, eval_records=4),
        dm.build_demo_student(tmp_path / "s", "same", train_steps=2, eval_records=4),
    ]
    for d in dirs:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            assert (d / name).is_file(), name
        tok = AutoTokenizer.from_pretrained(str(d))
        model = AutoModelForCausalLM.from_pretrained(str(d))
        cfg = model.config
        assert cfg.hidden_size // cfg.num_attention_heads >= 32
        responses = dm.generate_responses(model, tok, records, max_new_tokens=4)
        assert len(responses) == 4 and all(isinstance(r, str) for r in responses)
        assert 0.0 <= dm.greedy_accuracy(d, records, max_new_tokens=4) <= 1.0
        assert dm.read_info(d)["train_steps"] == 2
    same_vocab = AutoTokenizer.from_pretrained(str(dirs[2])).get_vocab()
    assert same_vocab == AutoTokenizer.from_pretrained(str(dirs[0])).get_vocab()
    assert same_vocab != AutoTokenizer.from_pretrained(str(dirs[1])).get_vocab()
    with pytest.raises(ValueError):
        dm.build_demo_student(tmp_path / "x", "other", train_steps=1)  # type: ignore[arg-type]
