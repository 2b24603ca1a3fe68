"""docs/architecture.md's rules, checked on every module's imports (read with `ast`, never imported).

The dependency table and the report's allowed modules are read from the document itself, so the
document is the rule. `check` is tested on a planted tree that breaks every rule once: each must be
reported, or this file would pass whatever the code did.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
MAX_LINES = 450
ALGORITHMS = frozenset({"echochamber.rl.grpo", "echochamber.rl.ppo", "echochamber.rl.reinforce", "echochamber.rl.ei"})
ALGORITHM_DISPATCH = "echochamber.rl.steps"
EXECUTES_CODE = "echochamber.verify"  # the one package that may run generated code
RUNNING_IMPORTS = frozenset({"subprocess", "runpy", "code", "pty"})
RUNNING_BUILTINS = frozenset({"exec", "eval", "compile"})
RUNNING_OS_CALLS = re.compile(r"^os\.(system|popen|exec\w*|spawn\w*)$")
COMMAND_LINE = frozenset({"echochamber.cli"})
MAIN_BLOCKS = frozenset({"echochamber.cli", "echochamber.__main__"})


@dataclass(frozen=True)
class Module:
    """What the rules need to know of one module, read from its source."""

    name: str  # dotted: echochamber.rl.grpo
    path: str  # for messages
    lines: int
    imports: frozenset[str]  # echochamber modules imported at run time (not under TYPE_CHECKING)
    other_imports: frozenset[str]  # top-level names of every other import (argparse, subprocess, ...)
    calls: frozenset[str]  # names of called builtins and `os.` functions (exec, os.system, ...)
    main_block: bool  # has `if __name__ == "__main__":`


def unit(module: str) -> str:
    """The package a module belongs to (`rl`), or the top-level module's own name (`dist`);
    `echochamber` itself (the root package, which holds only __version__) is its own unit."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    return skipped


def read_module(path: Path, name: str, known: set[str]) -> Module:
    """`known`: every module name of the tree, to tell `from echochamber.rl import ei` (a module)
    from `from echochamber import __version__` (a name in the root package)."""
    source = path.read_text()
    tree = ast.parse(source)
    skipped = _type_checking_nodes(tree)
    imports, others, calls, main_block = set(), set(), set(), False
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                (imports if alias.name.split(".")[0] == "echochamber" else others).add(
                    alias.name if alias.name.startswith("echochamber") else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] != "echochamber":
                others.add(node.module.split(".")[0])
                continue
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                imports.add(child if child in known else node.module)
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                calls.add(node.func.id)
            elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                calls.add(f"{node.func.value.id}.{node.func.attr}")
        elif isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"':
            main_block = True
    return Module(name, str(path), len(source.splitlines()), frozenset(imports), frozenset(others),
                  frozenset(calls), main_block)  # fmt: skip


def read_tree(package: Path) -> dict[str, Module]:
    """Every module under `package` (a folder named echochamber), by dotted name."""
    paths = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    known = set(paths)
    return {name: read_module(path, name, known) for name, path in paths.items()}


def read_table(doc: str) -> dict[str, frozenset[str] | None]:
    """The "may import" column of the Packages table: unit -> allowed units (None: everything)."""
    section = doc.split("## Packages", 1)[1].split("\n## ", 1)[0]
    table: dict[str, frozenset[str] | None] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        allowed = cells[2]
        table[cells[0].strip("`")] = None if allowed == "everything" else frozenset(re.findall(r"`(\w+)`", allowed))
    return table


def read_report_rule(doc: str) -> frozenset[str]:
    """The modules rule 4 lets the report import (besides its own)."""
    rule = re.search(r"^4\. \*\*The report.*?(?=^\d\. )", doc, re.MULTILINE | re.DOTALL)
    assert rule is not None, "rule 4 not found in docs/architecture.md"
    return frozenset(f"echochamber.{name}" for name in re.findall(r"`([\w.]+)`", rule.group(0)) if "/" not in name)


def cycles(table: dict[str, frozenset[str] | None]) -> list[str]:
    """Units that can reach themselves through the table's allowed imports."""
    found = []
    for start in table:
        stack, seen = [start], set()
        while stack:
            for nxt in table.get(stack.pop()) or ():
                if nxt == start:
                    found.append(start)
                    stack = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    return found


def check(modules: dict[str, Module], table: dict[str, frozenset[str] | None], report_may: frozenset[str]) -> list[str]:
    """Every violation of the rules in docs/architecture.md, one line each, tagged with its rule."""
    problems = [f"rule 1: the table lets {name} reach itself" for name in cycles(table)]
    for module in modules.values():
        here = unit(module.name)
        allowed = table.get(here, frozenset())
        for imported in sorted(module.imports):
            there = unit(imported)
            if imported != "echochamber" and there != here and allowed is not None and there not in allowed:
                problems.append(f"rule 1: {module.name} imports {imported} ({here} may not import {there})")
        if module.name in ALGORITHMS:
            for other in sorted(module.imports & (ALGORITHMS - {module.name})):
                problems.append(f"rule 2: {module.name} imports another algorithm, {other}")
        elif module.name != ALGORITHM_DISPATCH:
            for algorithm in sorted(module.imports & ALGORITHMS):
                problems.append(f"rule 2: {module.name} imports {algorithm} (only {ALGORITHM_DISPATCH} may)")
        if not (module.name + ".").startswith(EXECUTES_CODE + "."):
            running = (module.other_imports & RUNNING_IMPORTS) | (module.calls & RUNNING_BUILTINS)
            running |= {call for call in module.calls if RUNNING_OS_CALLS.match(call)}
            for name in sorted(running):
                problems.append(f"rule 3: {module.name} uses {name} outside verify/")
        if here == "report":
            for imported in sorted(module.imports):
                if unit(imported) != "report" and imported not in report_may:
                    problems.append(f"rule 4: {module.name} imports {imported}")
        if "argparse" in module.other_imports and module.name not in COMMAND_LINE:
            problems.append(f"rule 5: {module.name} parses a command line (argparse)")
        if module.main_block and module.name not in MAIN_BLOCKS:
            problems.append(f"rule 5: {module.name} has a __main__ block")
        if module.lines > MAX_LINES:
            problems.append(f"rule 6: {module.name} has {module.lines} lines (at most {MAX_LINES})")
    return problems


# ---------------------------------------------------------------------------------------------


def test_the_code_follows_every_rule_of_the_architecture_document() -> None:
    doc = DOC.read_text()
    modules = read_tree(ROOT / "echochamber")
    table = read_table(doc)
    assert {unit(name) for name in modules} - {"echochamber"} <= set(table), "a package is missing from the table"
    assert check(modules, table, read_report_rule(doc)) == []


def test_the_document_names_what_the_checker_enforces() -> None:
    doc = DOC.read_text()
    rules = doc.split("## Rules", 1)[1]
    for word in (*sorted(RUNNING_IMPORTS), *sorted(RUNNING_BUILTINS), "os.system", "os.popen", "argparse",
                 "rl/steps.py", f"{MAX_LINES} lines"):  # fmt: skip
        assert word in rules, word
    assert read_report_rule(doc) >= {"echochamber.eval.store", "echochamber.verify.normalize", "echochamber.rl.config"}


PLANTED = {
    "__init__.py": "",
    "errors.py": "class UserError(Exception): ...\n",
    "data/__init__.py": "",
    # rule 1: data is upstream of eval
    "data/world.py": "from echochamber.eval import suite\n",
    "eval/__init__.py": "",
    "eval/suite.py": "import subprocess\n",  # rule 3
    "rl/__init__.py": "",
    "rl/grpo.py": "from echochamber.rl import ppo\n",  # rule 2: an algorithm imports another
    "rl/ppo.py": "x = eval('1 + 1')\n",  # rule 3
    "rl/ei.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from echochamber.rl import grpo\n",  # exempt
    "rl/core.py": "from echochamber.rl.grpo import GRPO\n",  # rule 2: only steps.py dispatches
    "rl/steps.py": "from echochamber.rl import ei, grpo, ppo\n",  # allowed
    "report/__init__.py": "",
    "report/page.py": "from echochamber.rl.config import X\nfrom echochamber.rl import core\n",  # rule 4 (core)
    "report/tool.py": "import argparse\nimport os\nos.system('ls')\nif __name__ == '__main__':\n    pass\n",  # rules 3, 5
    "verify/__init__.py": "",
    "verify/sandbox.py": "import subprocess\nexec('1')\n",  # allowed: verify runs generated code
    "big.py": "x = 1\n" * (MAX_LINES + 1),  # rule 6
}
PLANTED_TABLE = {"errors": frozenset(), "data": frozenset({"errors"}), "eval": frozenset({"data", "errors"}),
                 "rl": frozenset({"eval", "data", "errors"}), "report": frozenset({"rl"}), "verify": frozenset(),
                 "big": frozenset()}  # fmt: skip


def test_the_checker_reports_every_planted_violation_and_nothing_else(tmp_path: Path) -> None:
    package = tmp_path / "echochamber"
    for relative, text in PLANTED.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    problems = check(read_tree(package), PLANTED_TABLE, frozenset({"echochamber.rl.config"}))
    assert sorted(problems) == sorted([
        "rule 1: echochamber.data.world imports echochamber.eval.suite (data may not import eval)",
        "rule 2: echochamber.rl.grpo imports another algorithm, echochamber.rl.ppo",
        "rule 2: echochamber.rl.core imports echochamber.rl.grpo (only echochamber.rl.steps may)",
        "rule 3: echochamber.eval.suite uses subprocess outside verify/",
        "rule 3: echochamber.rl.ppo uses eval outside verify/",
        "rule 3: echochamber.report.tool uses os.system outside verify/",
        "rule 4: echochamber.report.page imports echochamber.rl.core",
        "rule 5: echochamber.report.tool parses a command line (argparse)",
        "rule 5: echochamber.report.tool has a __main__ block",
        f"rule 6: echochamber.big has {MAX_LINES + 1} lines (at most {MAX_LINES})",
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("table", "looped"),
    [({"a": frozenset({"b"}), "b": frozenset({"a"})}, {"a", "b"}), ({"a": frozenset({"b"}), "b": frozenset()}, set())],
)
def test_a_table_with_a_cycle_breaks_rule_one(table: dict[str, frozenset[str]], looped: set[str]) -> None:
    assert set(cycles(table)) == looped
    assert bool(check({}, table, frozenset())) == bool(looped)


def test_the_table_is_read_from_the_document_as_written() -> None:
    table = read_table(DOC.read_text())
    assert table["errors"] == frozenset() and table["cli"] is None
    assert table["report"] is not None and "pretrain" not in table["report"]
    assert table["data"] == frozenset({"config", "errors", "formats"})
