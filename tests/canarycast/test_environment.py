"""The environment variables canarycast reads are named in one module
(`canarycast.environment`): no other module of the product names one, and none reads the
environment by a literal name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from canarycast import environment

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("canarycast", "server", "router", "cli")
VARIABLE = re.compile(r"^(CANARYCAST|OTEL)_[A-Z0-9_]+$")


def sources() -> list[Path]:
    return [
        path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "v1" not in path.relative_to(ROOT).parts and path.name != "environment.py"
    ]


def _reads_by_literal(node: ast.AST) -> bool:
    """`os.environ.get("X")`, `os.getenv("X")` or `os.environ["X"]`."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        f = ast.unparse(node.func)
        return f in ("os.environ.get", "os.getenv", "environ.get", "getenv")
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return ast.unparse(node.value) in ("os.environ", "environ")
    return False


def test_no_module_but_environment_names_a_variable_or_reads_one_by_literal() -> None:
    named, literal = [], []
    for path in sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and VARIABLE.match(node.value)
            ):
                named.append(f"{where}:{getattr(node, 'lineno', 0)}: {node.value}")
            if _reads_by_literal(node):
                literal.append(f"{where}:{getattr(node, 'lineno', 0)}: {ast.unparse(node)}")
    assert len(sources()) > 50  # the scan saw the product
    assert named == [], "variables named outside canarycast.environment"
    assert literal == [], "the environment read by a literal name"


def test_every_variable_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(environment.VARIABLES) == len(set(environment.VARIABLES)) >= 7
    assert [v for v in environment.VARIABLES if v not in readme] == []
