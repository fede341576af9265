"""Real production tokenizers for tests, without a model hub.

Why: the tokenizer bridge must be tested on what real byte-level BPE and SentencePiece
tokenizers do (split characters across tokens, add dummy prefixes, byte fallback), and
the only hub-free source of them is the vocabulary-only GGUF files that the
`llama-cpp-python` source distribution vendors under `vendor/llama.cpp/models/`.

What it does: downloads that sdist once (pinned: the vendored set changes between
versions) with pip, extracts only the GGUF files we use, converts each once into a
saved tokenizer directory (`tokenizer.json` + `tokenizer_config.json`, as the teacher
service would send them), all under `<repo>/.cache/opd/real-tokenizers/` or
`$OPD_CACHE_DIR/real-tokenizers/`. A file lock and done-markers make repeated and
concurrent runs cheap. Every failure raises: a test that needs these must fail, not skip.

What it does not know: anything about alignment; it only produces tokenizer directories.

Run it by hand to warm the cache: `.venv/bin/python tests/real_tokenizers.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from filelock import FileLock

SDIST_REQUIREMENT = "llama-cpp-python==0.3.36"
SDIST_NAME = "llama_cpp_python-0.3.36.tar.gz"
MODELS_PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"

# Short name -> GGUF file in the sdist. Qwen2, Llama 3 and GPT-2 are byte-level BPE;
# llama-spm is SentencePiece with byte fallback.
GGUF_FILES: dict[str, str] = {
    "qwen2": "ggml-vocab-qwen2.gguf",
    "llama3": "ggml-vocab-llama-bpe.gguf",
    "gpt2": "ggml-vocab-gpt-2.gguf",
    "llama-spm": "ggml-vocab-llama-spm.gguf",
}
BYTE_LEVEL_BPE = ("qwen2", "llama3", "gpt2")


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    env = os.environ.get("OPD_CACHE_DIR")
    base = Path(env) if env else repo_root() / ".cache" / "opd"
    return base / "real-tokenizers"


def _download_sdist(root: Path) -> Path:
    sdist_dir = root / "sdist"
    target = sdist_dir / SDIST_NAME
    if target.exists():
        return target
    sdist_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        SDIST_REQUIREMENT, "-d", str(sdist_dir),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not target.exists():
        raise RuntimeError(
            f"pip download of {SDIST_REQUIREMENT} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return target


def _extract_gguf(root: Path, sdist: Path) -> Path:
    gguf_dir = root / "gguf"
    if all((gguf_dir / f).exists() for f in GGUF_FILES.values()):
        return gguf_dir
    gguf_dir.mkdir(parents=True, exist_ok=True)
    wanted = {MODELS_PREFIX + f: f for f in GGUF_FILES.values()}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            name = wanted.get(member.name)
            if name is None or not member.isfile():
                continue
            src = tar.extractfile(member)
            if src is None:
                raise RuntimeError(f"cannot read {member.name} from {sdist.name}")
            tmp = gguf_dir / (name + ".part")
            tmp.write_bytes(src.read())
            tmp.replace(gguf_dir / name)
    missing = [f for f in GGUF_FILES.values() if not (gguf_dir / f).exists()]
    if missing:
        raise RuntimeError(f"{sdist.name} has no {', '.join(missing)} under {MODELS_PREFIX}")
    return gguf_dir


def _convert(gguf_dir: Path, out_dir: Path, gguf_name: str) -> None:
    # Loading from GGUF takes seconds per tokenizer; saving makes later loads instant.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    tmp = out_dir.with_name(out_dir.name + ".part")
    tok.save_pretrained(str(tmp))
    (tmp / "DONE").write_text(gguf_name + "\n")
    if out_dir.exists():
        raise RuntimeError(f"{out_dir} exists without a DONE marker; delete it and rerun")
    tmp.rename(out_dir)


def ensure_real_tokenizers() -> dict[str, Path]:
    """Return short name -> saved tokenizer directory, building the cache if needed."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    dirs = {name: root / "converted" / name for name in GGUF_FILES}
    if all((d / "DONE").exists() for d in dirs.values()):
        return dirs
    with FileLock(str(root / ".lock"), timeout=1800):
        gguf_dir: Path | None = None
        for name, out_dir in dirs.items():
            if (out_dir / "DONE").exists():
                continue
            if gguf_dir is None:
                gguf_dir = _extract_gguf(root, _download_sdist(root))
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            _convert(gguf_dir, out_dir, GGUF_FILES[name])
    return dirs


def gguf_path(name: str) -> Path:
    """The extracted GGUF file for `name` (for tests of `.gguf` loading)."""
    ensure_real_tokenizers()
    root = cache_root()
    path = root / "gguf" / GGUF_FILES[name]
    if not path.exists():
        with FileLock(str(root / ".lock"), timeout=1800):
            _extract_gguf(root, _download_sdist(root))
    return path


if __name__ == "__main__":
    for short, path in ensure_real_tokenizers().items():
        print(short, path)
