"""Loading a model runs no code from its directory (issue #11, promise 16): a directory
whose config.json or tokenizer_config.json maps classes to Python files in it
(`auto_map`) is refused, with a message naming the file, before anything is imported;
`--trust-remote-code` is the only way past it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opd_teacher.config import ConfigError, HFEngineConfig, VLLMEngineConfig

EVIL = "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('code ran')\n"


def _with_auto_map(source: Path, target: Path, file_name: str) -> Path:
    shutil.copytree(source, target)
    config_path = target / file_name
    config = json.loads(config_path.read_text())
    if file_name == "config.json":
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    else:
        config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    config_path.write_text(json.dumps(config))
    for module in ("modeling_evil.py", "tokenization_evil.py"):
        (target / module).write_text(EVIL)
    return target


@pytest.mark.parametrize("file_name", ["config.json", "tokenizer_config.json"])
def test_a_model_dir_with_auto_map_is_refused(
    tiny_teacher_dir: Path, tmp_path: Path, file_name: str, free_port: int
) -> None:
    model = _with_auto_map(tiny_teacher_dir, tmp_path / "model", file_name)
    for config_type in (HFEngineConfig, VLLMEngineConfig):
        with pytest.raises(ConfigError, match=rf"{file_name} maps classes to code .*evil"):
            config_type(model_dir=model)
    serve = [sys.executable, "-m", "opd_teacher.cli", "serve", "--model", str(model)]
    done = subprocess.run(
        [*serve, "--host", "127.0.0.1", "--port", str(free_port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "runs no code from a model directory" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (model / "RAN").exists()
    # The operator's explicit word is the only way past the check.
    assert HFEngineConfig(model_dir=model, trust_remote_code=True).trust_remote_code


def test_the_tiny_teacher_has_no_auto_map(tiny_teacher_dir: Path) -> None:
    assert HFEngineConfig(model_dir=tiny_teacher_dir).trust_remote_code is False
