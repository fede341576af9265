"""`opd-train align` on tiny tokenizer directories: JSON shape, exit codes, `-m` entry."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from opd_client.align.cli import main

TEXT = "Hello wörld, 12345 😀  end"


def _save(path: Path, vocab_size: int) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT * 3, "Hello world, hello there. 123 456"] * 5, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli-toks")
    return _save(root / "small", 262), _save(root / "large", 420)


def test_json_report(tok_dirs, capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPD_CACHE_DIR", str(tmp_path))
    small, large = tok_dirs
    rc = main(["--student", str(small), "--teacher", str(large), "--text", TEXT, "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    data = TEXT.encode()
    for side in ("student_tokens", "teacher_tokens"):
        spans = [tok["span"] for tok in report[side]]
        assert spans[0][0] == 0 and spans[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert all(set(tok) == {"id", "text", "span"} for tok in report[side])
    assert len(report["aligned"]) == len(report["student_tokens"])
    assert report["aligned"][0] is True
    frac = sum(report["aligned"]) / len(report["aligned"])
    assert report["aligned_fraction"] == pytest.approx(frac)
    assert 0 < frac < 1  # different vocabularies: some, not all, positions align
    assert {"masked_by_reason", "mapped_mass_fraction"} <= set(report["stats"])
    teacher_ends = {tok["span"][1] for tok in report["teacher_tokens"]} | {0}
    for tok, aligned in zip(report["student_tokens"], report["aligned"], strict=True):
        assert aligned == (tok["span"][0] in teacher_ends)


def test_human_output_and_file_input(tok_dirs, capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPD_CACHE_DIR", str(tmp_path))
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    small, _ = tok_dirs
    assert main(["--student", str(small), "--teacher", str(small), "--file", str(f)]) == 0
    out = capsys.readouterr().out
    assert "identity=True" in out and "aligned fraction 1.000" in out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--teacher", "nowhere/tok"], "tokenizer 'nowhere/tok': no such file"),
        (["--teacher", "{small}", "--top-k", "0"], "--top-k"),
        (["--teacher", "{small}", "--file", "missing.txt"], "cannot read --file"),
    ],
)
def test_errors_exit_2_with_one_line(tok_dirs, capsys, extra, needle) -> None:  # type: ignore[no-untyped-def]
    small, _ = tok_dirs
    args = ["--student", str(small)] + [a.format(small=small) for a in extra]
    if "--file" not in args:
        args += ["--text", "x"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_usage_error_is_exit_2(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--student", "x"]) == 2


def test_module_entry_point(tok_dirs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    small, large = tok_dirs
    cmd = [sys.executable, "-m", "opd_client.align.cli", "--student", str(small)]
    cmd += ["--teacher", str(large), "--text", TEXT, "--json"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={"OPD_CACHE_DIR": str(tmp_path)}
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["student_tokens"]
