"""The package's shape: no import cycle between its modules (in-function imports included), the fuse options
declared once (the command line and the batch manifest read the same table)."""
import ast
import argparse
from pathlib import Path

import pytest

from ECFusionLib import options

PACKAGE = Path(__file__).resolve().parents[1] / "ECFusionLib"


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ECFusionLib."):
            found.add(node.module.split(".")[1])
    return found


def test_no_import_cycle():
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {m: _imports(PACKAGE / f"{m}.py") & modules for m in modules}
    state: dict[str, int] = {}

    def visit(m, trail):
        if state.get(m) == 1:
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph[m]):
            visit(n, trail + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def test_fuse_options_and_manifest_columns_come_from_one_table():
    from ECFusionLib.cli import build_parser
    from ECFusionLib.fuse_files import FuseRequest
    from ECFusionLib.manifest import _fuse_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    fuse = {a.dest for a in sub.choices["fuse"]._actions} - {"help"}
    assert fuse == set(options.OPTIONS_BY_NAME)
    request_fields = set(FuseRequest.__dataclass_fields__)
    assert set(options.manifest_columns()) <= request_fields  # each column is a request field
    ns = _fuse_parser().parse_args(["--output=o.nrrd", "--window=6", "--ct-level=-20"])
    assert (ns.window, ns.ct_level, ns.keep_salient, ns.register) == (6.0, -20.0, True, "none")
