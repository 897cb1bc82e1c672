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


ROOT = PACKAGE.parent
TASK_LITERAL_DIRS = ("ECFusionLib", "ECFusionSlicer", "scripts")


def _docstrings(tree) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_task_names_live_only_in_tasks_py():
    """Issue 22: the TaskSpec travels; no code outside tasks.py names a task (docstrings may show examples).
    A task added to tasks.py then needs no edit in the library, the Slicer module or the scripts."""
    from ECFusionLib.tasks import TASK_NAMES

    found = []
    for folder in TASK_LITERAL_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "tasks.py" and path.parent.name == "ECFusionLib":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docs = _docstrings(tree)
            found += [f"{path.relative_to(ROOT)}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                      if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
                      and n.value.upper() in TASK_NAMES]
    assert found == []


def test_each_mapping_a_spec_names_has_its_mapper():
    """tasks.SECOND_MAPPINGS / ANATOMICAL_MAPPINGS are the keys of intensity's mapper tables, so a TaskSpec can
    only name a mapping that fuse_images can run."""
    from ECFusionLib import intensity, tasks

    assert set(intensity.SECOND_MAPPERS) == set(tasks.SECOND_MAPPINGS)
    assert set(intensity.ANATOMICAL_MAPPERS) == set(tasks.ANATOMICAL_MAPPINGS)


@pytest.mark.parametrize("name", options.NUMBER_OPTIONS)
def test_number_bounds_are_declared_once(name):
    """The option's bound is what its argparse type, check_numbers (the library) and, within the panel range,
    the Slicer panel check: one declaration, three readers."""
    from ECFusionLib.errors import ECFusionError
    from ECFusionLib.input_checks import check_numbers

    o = options.OPTIONS_BY_NAME[name]
    if o.minimum is None:
        bad = float("nan")
    else:
        bad = o.kind(o.minimum) if o.strict_minimum else o.kind(o.minimum - 1)
    with pytest.raises(argparse.ArgumentTypeError):
        o.type(str(bad))
    with pytest.raises(ECFusionError):
        check_numbers(**{name: bad})
    if o.panel_range is not None:
        low, high = o.panel_range
        assert options.check_number(name, high, panel=True) == high
        with pytest.raises(ECFusionError, match="between"):
            options.check_number(name, high + 1, panel=True)


def test_small_functions_and_modules():
    """Readable sizes (issue 22): no function of the library or the Slicer module over 80 lines; the command line
    a thin layer (cli.py <= 400 lines) and the training loop <= 450 lines."""
    slicer = PACKAGE.parent / "ECFusionSlicer"
    long = []
    for path in [*PACKAGE.glob("*.py"), *slicer.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
    for name, most in (("cli.py", 400), ("training.py", 450)):
        assert len((PACKAGE / name).read_text(encoding="utf-8").splitlines()) <= most, name
