"""How the package is put together: no import cycles between its modules (a cycle works only by the
order modules happen to be imported in, or by imports hidden in functions); importing it changes nothing, and
fairseq's --user-dir import loads the plugin."""
import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "ofa_prompt"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set) -> set:
    """The package's modules that `path` imports, at module level or inside a function (an import put in a
    function to get round a cycle still is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict) -> list:
    out, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                out.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return out


def test_cycles_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    # a package's __init__ importing its own modules (registration) is not a cycle with them
    graph = {module_name(f): {m for m in imports(f, modules)
                              if not module_name(f).startswith(m + ".")} for f in files}
    assert cycles(graph) == []


def run_python(code: str) -> list:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_a_plain_import_changes_nothing():
    """`import ofa_prompt` from Python imports neither fairseq nor torch and changes no global state: the
    plugin is loaded by load() (the Python API, the tools) or by fairseq's --user-dir."""
    code = ("import logging, sys, warnings\n"
            "hook, level, filters = sys.excepthook, logging.root.level, list(warnings.filters)\n"
            "import ofa_prompt\n"
            "print('fairseq' in sys.modules, 'torch' in sys.modules, sys.excepthook is hook, "
            "logging.root.level == level, warnings.filters == filters)")
    assert run_python(code) == ["False", "False", "True", "True", "True"]


def test_fairseqs_user_dir_import_loads_the_plugin():
    """fairseq-train/-generate --user-dir: fairseq.utils.import_user_module imports the package, which loads the
    plugin there: its tasks registered, fairseq's behaviour changed (the one-line input errors of a command)."""
    code = ("import argparse, sys\n"
            "from fairseq import utils\n"
            "from fairseq.tasks import TASK_REGISTRY\n"
            f"utils.import_user_module(argparse.Namespace(user_dir={str(PACKAGE)!r}))\n"
            "print('caption' in TASK_REGISTRY, getattr(sys.excepthook, 'one_line_input_errors', False))")
    assert run_python(code) == ["True", "True"]


def test_the_python_api_loads_the_plugin_without_the_commands_error_hook():
    code = ("import sys\n"
            "import ofa_prompt\n"
            "ofa_prompt.load_model\n"
            "from fairseq.tasks import TASK_REGISTRY\n"
            "print('caption' in TASK_REGISTRY, getattr(sys.excepthook, 'one_line_input_errors', False))")
    assert run_python(code) == ["True", "False"]


def test_the_api_module_loads_the_plugin_when_imported_directly():
    """`from ofa_prompt.hub import load_model` (not through the package's attribute) loads the plugin when called:
    torch then reads the argparse.Namespace that OFA's checkpoints pickle (the reference checkpoint, written by
    OFA's code, has one)."""
    from conftest import REFERENCE

    code = ("import sys\n"
            "from ofa_prompt.hub import load_model\n"
            f"model = load_model({str(REFERENCE / 'plain.pt')!r})\n"
            "from fairseq.tasks import TASK_REGISTRY\n"
            "print(type(model).__name__, 'caption' in TASK_REGISTRY)")
    assert run_python(code) == ["OFAModel", "True"]


def test_no_module_over_400_lines_without_its_reason():
    """A module of the package over about 400 lines says in its docstring why it is one module ("Over 400 lines:
    ..."); the others are split where a concept ends."""
    long = [path for path in sorted(PACKAGE.rglob("*.py")) if len(path.read_text().splitlines()) > 400]
    unexplained = [f"{path.relative_to(REPO)}: {len(path.read_text().splitlines())} lines" for path in long
                   if "Over 400 lines:" not in (ast.get_docstring(ast.parse(path.read_text())) or "")]
    assert unexplained == [], "split these or give the reason in the docstring:\n" + "\n".join(unexplained)
