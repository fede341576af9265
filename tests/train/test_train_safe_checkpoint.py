"""A checkpoint file crafted to run code when unpickled is refused, not executed (issue
#11, promise 15): `opd-train run` resuming from it exits 2 with one line naming the file,
and the code never runs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from opd_client.train.checkpoint import MANIFEST, UnsafeCheckpointError, load_rng
from opd_client.train.cli import main

MakeConfig = Callable[..., Path]  # the `make_config` fixture of tests/train/conftest.py


class _Payload:
    """Unpickling this calls os.makedirs(marker): the code a crafted file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (str(self.marker),))


def test_a_crafted_pickle_in_a_checkpoint_is_refused(
    make_config: MakeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(run_dir=tmp_path / "run", max_steps=2, checkpoint__interval=2)
    assert main(["run", str(config)]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    marker = tmp_path / "code-ran"
    torch.save({"cpu": _Payload(marker)}, checkpoint / "rng.pt")
    # Whoever can write the file can rewrite the manifest too: it guards against torn
    # writes, the tensors-only loader against this.
    crafted = checkpoint / "rng.pt"
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    manifest["files"]["rng.pt"] = {
        "size": crafted.stat().st_size,
        "sha256": hashlib.sha256(crafted.read_bytes()).hexdigest(),
    }
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeCheckpointError, match=r"rng\.pt: refused"):
        load_rng(checkpoint)
    capsys.readouterr()
    longer = make_config(run_dir=tmp_path / "run", max_steps=4, checkpoint__interval=2)
    assert main(["run", str(longer)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("opd-train: error:") and "rng.pt: refused" in err
    assert len(err.splitlines()) == 1
    assert not marker.exists()  # the payload never ran
