"""Hatch build hook: generates the contract's Python code before every build, editable
installs included, so generated files are never committed (see codegen.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CodegenHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        sys.path.insert(0, str(Path(self.root)))
        from codegen import generate

        generate(Path(self.root))
