"""The two-task demo's config (`demo_multi.multi_config`) is a valid trainer config: the
demo's recipe with a `teachers:` list that routes every prompt by its task, two-task
prompt and eval files with `task` on every line, held-out problems disjoint from the
training ones; and `method.py --multi`'s arms route both tasks somewhere."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from opd_client.train import multitask_models as mm
from opd_client.train import task, task_sort
from opd_client.train.config_load import load_config
from opd_client.train.demo_multi import ROUTED, multi_config, write_multi_data
from opd_client.train.rollout import load_prompts
from opd_client.train.teachers import route_prompts

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _config(tmp_path: Path, routes: dict[str, tuple[str, ...]]) -> Path:
    prompts, heldout = write_multi_data(tmp_path / "data", 15)
    (tmp_path / "student").mkdir(exist_ok=True)
    teachers = {
        name: (f"127.0.0.1:{1000 + i}", tasks) for i, (name, tasks) in enumerate(routes.items())
    }
    raw = multi_config(tmp_path / "student", teachers, prompts, heldout, tmp_path / "run", 40)
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_multi_config_routes_every_prompt_to_its_expert(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, dict(ROUTED)))
    assert [(t.name, t.tasks) for t in config.teachers] == [
        ("adder", ("addition",)),
        ("sorter", ("sorting",)),
    ]
    assert all(t.top_k == 32 for t in config.teachers)
    assert config.loss.variant == "lsm" and config.rollout.top_p == 0.9
    assert config.masking.special_policy == "paper" and config.default_teacher == ""
    assert config.optim.lr == 1e-4 and config.torch_threads == 1
    train = load_prompts(config.prompts)
    heldout = load_prompts(str(config.eval.prompts))
    assert {r.task for r in train} == {r.task for r in heldout} == {"addition", "sorting"}
    assert len(heldout) == 30 and all(r.answer for r in heldout)
    assert not {str(r.prompt) for r in train} & {str(r.prompt) for r in heldout}
    routes = route_prompts(config, train, "train.jsonl")
    for record, teacher in zip(train, routes, strict=True):
        assert config.teachers[teacher].tasks == (record.task,)
    for r in heldout:  # the shared verifier accepts each task's reference
        spec = mm.task_spec(str(r.task))
        record = {"messages": r.prompt, "task": r.task}
        assert task.exact_match(r.prompt, spec.reference_for(record), str(r.answer))
    assert task_sort.parse_prompt(next(r.prompt for r in heldout if r.task == "sorting"))


def test_method_multi_arms_route_both_tasks(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import method_multi
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert set(method_multi.MULTI_ARMS) == {"routed", "adder_only", "sorter_only"}
    for arm, routes in method_multi.MULTI_ARMS.items():
        config = load_config(_config(tmp_path / arm, routes))
        train = load_prompts(config.prompts)
        assert len(set(route_prompts(config, train, "train.jsonl"))) == len(routes), arm
