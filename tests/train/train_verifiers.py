"""Verifiers for the trainer's eval tests, importable as `train_verifiers:<name>` (pytest puts
this folder on sys.path): one that accepts any response, one that accepts none."""

from __future__ import annotations

from typing import Any


def accept_all(prompt: Any, response: str, answer: str) -> bool:
    del prompt, response, answer
    return True


def reject_all(prompt: Any, response: str, answer: str) -> bool:
    del prompt, response, answer
    return False
