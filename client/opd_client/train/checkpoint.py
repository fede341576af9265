"""Atomic, pickle-free checkpoints that a run killed at any moment resumes from exactly.

Why this module exists: a job may be SIGKILLed at any instant, including in the middle of
a save. So a checkpoint is written into a temporary directory on the same filesystem,
every file fsynced, then `manifest.json` (each file's size and sha256) is written last,
the directory is renamed to `step-NNNNNNNN` (rename is atomic) and the parent fsynced;
after that a `latest` pointer file is replaced atomically the same way. Resume takes the
newest `step-*` whose manifest verifies (a directory without one is never used; one whose
files no longer match it — a torn copy, a flipped bit — is passed over with a warning),
so a kill between the rename and the pointer loses nothing.

Contents: `model/` (save_pretrained: safetensors + config + the student's tokenizer, so
it is also what `opd-train export` copies), `optimizer.pt` (tensor-only dict) with
`optimizer.json` (the rest of the state dict), `rng.pt` (torch CPU and CUDA generator
states as tensors), `state.json` (step, data position, the resolved config, the teacher's
fingerprint). Nothing but tensors goes through torch's serialiser, loaded with
`weights_only=True`. The learning-rate schedule is a pure function of the step, so it
has no state of its own.

What it does not know: how the state is used; the loop decides what to save and compare.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)
STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
LATEST = "latest"
MANIFEST = "manifest.json"
# Test hook only: seconds to sleep between the files of a save (to SIGKILL mid-save).
SAVE_SLEEP_ENV = "OPD_TRAIN_TEST_SAVE_SLEEP_S"


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def model_dir(self) -> Path:
        return self.path / "model"


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pause() -> None:
    delay = float(os.environ.get(SAVE_SLEEP_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def capture_rng() -> dict[str, torch.Tensor]:
    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"torch_cuda_{i}"] = s
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, entry in sd["state"].items():
        slot: dict[str, Any] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}/{key}"] = value.detach().cpu().clone()
                slot[key] = {"tensor": f"{pid}/{key}"}
            else:
                slot[key] = {"value": value}
        meta["state"][str(pid)] = slot
    return tensors, meta


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds more than tensors (a crafted or foreign pickle): refused."""


def _load_tensors(file: Path) -> Any:
    """torch's loader restricted to tensors and plain containers; anything else (a pickle
    that would build arbitrary objects, or run code) is refused, never executed."""
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(
            f"{file}: refused, it holds more than tensors ({first[:160]})"
        ) from None


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    tensors = _load_tensors(path / "optimizer.pt")
    meta = json.loads((path / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for pid, slot in meta["state"].items():
        state[int(pid)] = {
            k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in slot.items()
        }
    for group in meta["param_groups"]:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    ckpt_dir: Path,
    *,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Writes checkpoint `step` atomically, points `latest` at it, keeps the last N."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{STEP_PREFIX}{step:08d}"
    tmp = ckpt_dir / f"{TMP_PREFIX}{STEP_PREFIX}{step:08d}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    _pause()
    tensors, meta = _optimizer_parts(optimizer)
    torch.save(tensors, tmp / "optimizer.pt")
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    _pause()
    torch.save({k: v.clone() for k, v in rng.items()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1, sort_keys=True))
    for file in tmp.rglob("*"):
        if file.is_file():
            _fsync_file(file)
    _fsync_dir(tmp / "model")
    _pause()
    (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp), indent=1, sort_keys=True))
    _fsync_file(tmp / MANIFEST)
    _fsync_dir(tmp)
    _pause()
    if final.exists():  # a re-save of the same step (e.g. after a teacher timeout)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    _pause()
    write_atomic(ckpt_dir / LATEST, final.name + "\n")
    for old in complete_checkpoints(ckpt_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(directory: Path) -> dict[str, Any]:
    files = sorted(f for f in directory.rglob("*") if f.is_file() and f.name != MANIFEST)
    return {
        "files": {
            str(f.relative_to(directory)): {"size": f.stat().st_size, "sha256": _sha256(f)}
            for f in files
        }
    }


def verify_manifest(path: Path) -> bool:
    """True when `path/manifest.json` exists and every file it lists has its size and
    sha256 (and no listed file is missing)."""
    try:
        listed = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for name, entry in listed.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != entry["size"]:
            return False
        if _sha256(file) != entry["sha256"]:
            return False
    return True


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """`step-*` directories with a manifest (written last), oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [
        p
        for p in ckpt_dir.iterdir()
        if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def find_latest(ckpt_dir: Path) -> Checkpoint | None:
    """The newest checkpoint whose manifest verifies; newer ones that do not are logged."""
    for path in reversed(complete_checkpoints(ckpt_dir)):
        if verify_manifest(path):
            return read_checkpoint(path)
        logger.warning("checkpoint %s does not match its manifest; passed over", path)
    return None


def read_checkpoint(path: Path) -> Checkpoint:
    return Checkpoint(path, json.loads((path / "state.json").read_text()))


def resolve_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint from its own directory, a checkpoints directory (its newest) or a run
    directory (`<run>/checkpoints`, newest)."""
    if (path / "state.json").is_file():
        if not verify_manifest(path):
            raise FileNotFoundError(f"{path}: its files do not match its {MANIFEST}")
        return read_checkpoint(path)
    for candidate in (path, path / "checkpoints"):
        ckpt = find_latest(candidate)
        if ckpt is not None:
            return ckpt
    raise FileNotFoundError(f"{path}: no complete checkpoint there")


def remove_partial(ckpt_dir: Path) -> None:
    """Deletes temporary directories left by a save that was killed."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(TMP_PREFIX):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def load_rng(path: Path) -> dict[str, torch.Tensor]:
    return _load_tensors(path / "rng.pt")


def export_checkpoint(source: Path, out: Path) -> Path:
    """Copies a checkpoint's student (save_pretrained dir + tokenizer) to `out`, which
    must not exist or be empty; written beside it first, then renamed."""
    found = resolve_checkpoint(Path(source))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{TMP_PREFIX}{out.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(found.model_dir, tmp)
    if out.exists():
        out.rmdir()
    os.rename(tmp, out)
    return out
