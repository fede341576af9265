"""The demo's config is a valid trainer config and is the paper's recipe: teacher top-K
LSM with K=32, renormalised, top-p 0.9 rollouts at temperature 1, special-token masking,
and an eval set of held-out problems disjoint from the training prompts."""

from __future__ import annotations

from pathlib import Path

import yaml

from opd_client.train import task
from opd_client.train.config_load import load_config
from opd_client.train.demo import demo_config
from opd_client.train.rollout import load_prompts


def test_demo_config_is_the_papers_recipe(tmp_path: Path) -> None:
    data = tmp_path / "data"
    task.write_jsonl(task.make_records(50, "train"), data / "train.jsonl")
    task.write_jsonl(task.make_records(20, "heldout"), data / "heldout-20.jsonl")
    (tmp_path / "student").mkdir()
    raw = demo_config(tmp_path / "student", "127.0.0.1:1", data, tmp_path / "run", 40, 20)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    assert config.teachers[0].top_k == 32
    assert config.loss.variant == "lsm" and config.loss.support == "teacher_topk"
    assert config.loss.renormalize in (None, True)
    assert config.rollout.top_p == 0.9 and config.rollout.temperature == 1.0
    assert config.masking.special_policy == "paper"
    assert config.eval.decoding == "greedy" and config.eval.interval == 10
    train = {str(r.prompt) for r in load_prompts(config.prompts)}
    heldout = {str(r.prompt) for r in load_prompts(str(config.eval.prompts))}
    assert heldout and not train & heldout


def test_set_accepts_exponent_floats_yaml_reads_as_strings(tmp_path: Path) -> None:
    (tmp_path / "student").mkdir()
    raw = demo_config(tmp_path / "student", "127.0.0.1:1", tmp_path, tmp_path / "run", 10, 5)
    del raw["eval"]
    (tmp_path / "train.jsonl").write_text('{"prompt": "x"}\n')
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path, ["optim.lr=1e-4"]).optim.lr == 1e-4
