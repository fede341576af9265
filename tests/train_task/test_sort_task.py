"""The sorting task (`opd_client.train.task_sort`) and the two-task helpers of
`multitask_models` that need no model: records, splits, traces, the shared verifier and
the sorting teacher's tokenizer recipe. The models' accuracy is reported by
`python -m opd_client.train.multitask_models`, not tested here (a build takes minutes).
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from opd_client.train import task, task_sort


def test_generation_is_deterministic_and_splits_are_disjoint(tmp_path: Path) -> None:
    train = task_sort.make_records(2000, "train", seed=3)
    assert train == task_sort.make_records(2000, "train", seed=3)
    assert train[:50] == task_sort.make_records(50, "train", seed=3)
    heldout = task_sort.make_records(300, "heldout", seed=3)
    seqs = {task_sort.parse_prompt(r["messages"]) for r in train}
    held = {task_sort.parse_prompt(r["messages"]) for r in heldout}
    assert len(seqs) == 2000 and len(held) == 300
    assert not seqs & held
    assert all(task_sort.split_of(d) == "heldout" for d in held)
    other = {
        task_sort.parse_prompt(r["messages"]) for r in task_sort.make_records(300, "heldout", 4)
    }
    assert other != held and not other & seqs
    lengths = Counter(len(d) for d in seqs)
    assert set(lengths) == {3, 4, 5, 6}
    r = train[0]
    assert set(r) == {"messages", "answer", "task"} and r["task"] == "sorting"
    path = task.write_jsonl(train[:5], tmp_path / "train.jsonl")
    assert task.read_jsonl(path) == train[:5]
    with pytest.raises(ValueError):
        task_sort.make_records(1, "test")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("digits", "expected"),
    [
        ((5, 3, 8, 5, 1), "<think>1:1,3:1,5:2,8:1</think>13558"),
        ((0, 0, 0), "<think>0:3</think>000"),
        ((9, 8, 7, 6, 5, 4), "<think>4:1,5:1,6:1,7:1,8:1,9:1</think>456789"),
        ((2, 0, 2, 0), "<think>0:2,2:2</think>0022"),
    ],
)
def test_reference_edge_cases(digits: tuple[int, ...], expected: str) -> None:
    assert task_sort.reference_solution(digits) == expected
    record = task_sort.make_record(digits)
    assert task_sort.reference_for(record) == expected
    assert record["messages"][0]["content"] == "Sort " + " ".join(map(str, digits)) + "."


def test_trace_and_answer_are_correct_everywhere() -> None:
    for n in (3, 4):
        for digits in itertools.product(range(10), repeat=n):
            trace = task_sort.reasoning_trace(digits)
            expanded = "".join(d * int(c) for d, c in (s.split(":") for s in trace.split(",")))
            assert expanded == task_sort.sorted_answer(digits) == "".join(map(str, sorted(digits)))


def test_the_addition_verifier_checks_sorting_unchanged() -> None:
    record = task_sort.make_record((5, 0, 8))
    ref = task_sort.reference_for(record)
    assert record["answer"] == "058"
    # Decoding stops at the end-of-turn token, so responses reach the verifier without the
    # sorting teacher's `<|eot_id|>` (which task.END_MARKERS does not list).
    for response in (ref, ref + "</s>", ref + "<|im_end|>", ref + " \n"):
        assert task.exact_match(record["messages"], response, record["answer"]), response
    for response in ("<think>0:1</think>58", "<think>x</think>508", "058", "<think>x</think>0 58"):
        assert not task.exact_match(record["messages"], response, record["answer"]), response
    assert task.accuracy([record, record], [ref, "<think></think>85"]) == 0.5


def test_bad_prompts_and_digits_are_refused() -> None:
    for prompt in ("What is 1+2?", "Sort 1 2.", "Sort 1 2 3 4 5 6 7.", "Sort a b c."):
        with pytest.raises(ValueError):
            task_sort.parse_prompt(prompt)
    with pytest.raises(ValueError):
        task_sort.parse_prompt([{"role": "system", "content": "Sort 1 2 3."}])
    assert task_sort.parse_prompt([{"role": "user", "content": "Sort 1 2 3."}]) == (1, 2, 3)
    for digits in ((1, 2), (1, 2, 10), (1, -1, 2)):
        with pytest.raises(ValueError):
            task_sort.prompt_text(digits)


def test_mixed_records_interleave_both_tasks_with_their_task() -> None:
    from opd_client.train import multitask_models as mm

    records = mm.mixed_records(5, "heldout", seed=1)
    assert [r["task"] for r in records] == ["addition", "sorting"] * 5
    assert records[::2] == task.make_records(5, "heldout", seed=1)
    assert records[1::2] == task_sort.make_records(5, "heldout", seed=1)
    for r in records:
        assert task.exact_match(r["messages"], mm.reference_for(r), r["answer"])
    assert [r["task"] for r in mm.mixed_records(2, "train", tasks=["sorting"])] == ["sorting"] * 2
    with pytest.raises(ValueError):
        mm.task_spec("multiplication")


def test_sort_teacher_tokenizer_differs_from_the_others_and_round_trips() -> None:
    from opd_client.train import demo_models as dm
    from opd_client.train import multitask_models as mm

    sort_teacher = mm.build_tokenizer(mm.SORT_TEACHER_TOKENIZER, ["sorting"])
    student = mm.build_tokenizer(mm.MULTI_STUDENT_TOKENIZER, ["addition", "sorting"])
    add_teacher = dm.build_tokenizer(dm.TEACHER_TOKENIZER)
    vocabs = [tok.get_vocab() for tok in (sort_teacher, student, add_teacher)]
    assert vocabs[0] != vocabs[1] and vocabs[0] != vocabs[2] and vocabs[1] != vocabs[2]
    assert "<think>" in sort_teacher.get_added_vocab()
    assert "<think>" not in student.get_added_vocab()
    record = task_sort.make_record((5, 3, 8, 5, 1))
    rendered = set()
    for tok in (sort_teacher, student, add_teacher):
        for text in (record["messages"][0]["content"], task_sort.reference_for(record)):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids, skip_special_tokens=False) == text
        rendered.add(
            tok.apply_chat_template(record["messages"], add_generation_prompt=True, tokenize=False)
        )
    assert len(rendered) == 3  # three different chat templates
    assert "<|eot_id|>" in sort_teacher.apply_chat_template(
        [*record["messages"], {"role": "assistant", "content": "x"}], tokenize=False
    )


def test_weighted_records_follow_the_mix() -> None:
    from opd_client.train import multitask_models as mm

    records = mm.weighted_records(400, "train", {"addition": 3, "sorting": 1}, seed=2)
    assert len(records) == 400
    assert [r["task"] for r in records[:8]] == ["addition"] * 3 + ["sorting"] + ["addition"] * 3 + [
        "sorting"
    ]
    assert Counter(r["task"] for r in records) == {"addition": 300, "sorting": 100}
    assert records[:40] == mm.weighted_records(40, "train", {"addition": 3, "sorting": 1}, 2)
    assert [r for r in records if r["task"] == "sorting"] == task_sort.make_records(100, "train", 2)
    with pytest.raises(ValueError):
        mm.weighted_records(4, "train", {"sorting": 0})


@pytest.mark.slow
def test_builders_save_loadable_models(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opd_client.train import demo_models as dm
    from opd_client.train import multitask_models as mm

    teacher = mm.build_sort_teacher(tmp_path / "t", train_steps=2, eval_records=4)
    student = mm.build_multi_student(tmp_path / "s", train_steps=2, eval_records=4)
    for d in (teacher, student):
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            assert (d / name).is_file(), name
        cfg = AutoModelForCausalLM.from_pretrained(str(d)).config
        assert cfg.hidden_size // cfg.num_attention_heads == 32
        info = dm.read_info(d)
        assert info["train_steps"] == 2 and set(info["heldout_accuracy_by_task"]) == {
            "addition",
            "sorting",
        }
        assert "held-out accuracy addition" in mm.describe("x", d)
    assert dm.read_info(teacher)["tasks_trained"] == {"sorting": 1}
    assert AutoModelForCausalLM.from_pretrained(str(teacher)).config.num_hidden_layers == 4
    assert AutoModelForCausalLM.from_pretrained(str(student)).config.num_hidden_layers == 2
    t_tok, s_tok = (AutoTokenizer.from_pretrained(str(d)) for d in (teacher, student))
    assert t_tok.get_vocab() != s_tok.get_vocab()
    assert "<|eot_id|>" in t_tok.get_added_vocab() and "</s>" in s_tok.get_added_vocab()
