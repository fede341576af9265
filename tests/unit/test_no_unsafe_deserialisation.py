"""No unsafe deserialisation in opd's code (issue #11, promise 15): nothing a user or the
network supplies goes through pickle. This is the CI check: it parses every module of the
four packages (and the scripts that ship with them) and fails on any call that would
unpickle — `pickle.load(s)`, `Unpickler`, `marshal`, `shelve`, `dill`, `joblib.load`,
`pandas.read_pickle`, `numpy.load(allow_pickle=True)`, and `torch.load` without
`weights_only=True`. The checker itself is tested on a snippet with each of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["protos/opd_protos", "services", "client/opd_client", "benchmarks", "deploy"]
UNPICKLING_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("marshal", "load"),
    ("marshal", "loads"),
    ("shelve", "open"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("pandas", "read_pickle"),
    ("pd", "read_pickle"),
}


def _keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def unsafe_calls(source: str, file_name: str = "<snippet>") -> list[str]:
    """`file:line: what` for every call in `source` that could unpickle untrusted data."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        module = owner.id if isinstance(owner, ast.Name) else None
        name = node.func.attr
        where = f"{file_name}:{node.lineno}"
        if (module, name) in UNPICKLING_CALLS:
            found.append(f"{where}: {module}.{name}")
        elif module == "torch" and name == "load" and not _keyword_is_true(node, "weights_only"):
            found.append(f"{where}: torch.load without weights_only=True")
        elif (
            module in ("np", "numpy") and name == "load" and _keyword_is_true(node, "allow_pickle")
        ):
            found.append(f"{where}: numpy.load(allow_pickle=True)")
    return found


def test_the_checker_catches_every_form() -> None:
    snippet = "\n".join(
        [
            "pickle.loads(data)",
            "pickle.Unpickler(f)",
            "torch.load(path)",
            "torch.load(path, weights_only=False)",
            "np.load(f, allow_pickle=True)",
            "joblib.load(f)",
            "pd.read_pickle(f)",
            "torch.load(path, weights_only=True)",  # the safe form
            "np.load(f)",  # the safe form
        ]
    )
    assert [f.split(": ", 1)[0] for f in unsafe_calls(snippet)] == [
        f"<snippet>:{n}" for n in range(1, 8)
    ]


@pytest.mark.parametrize("folder", SOURCES)
def test_no_module_unpickles(folder: str) -> None:
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, f"{folder} holds no Python files: the check would test nothing"
    found = [
        hit
        for path in files
        for hit in unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    ]
    assert not found, "unpickling calls:\n" + "\n".join(found)
