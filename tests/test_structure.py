"""The package map: which package may import which (read with ast, nothing is imported), and one error root.

    latentcomm (core)      <- imports no outer package; no Ray/DeepSpeed at module load
      .errors .packages .stats .testing   <- the base every subpackage may use (testing builds a tiny model)
      .model               <- the base only (no protocol, no engine)
      .engine              <- model, protocols
      .runtime             <- engine (the one home of Ray in the core, loaded on first use)
      .http                <- protocols (no torch)
      .tasks               <- the base only
      .cli                 <- any of the core
    latentcomm.protocols   <- msgpack, numpy and the standard library only
    latentcomm.actors      <- the core
    latentcomm.training    <- the core
    latentcomm.benchmarks  <- the core, actors, training (nothing but experiments imports benchmarks)
    latentcomm.experiments <- the core, actors, training, benchmarks (nothing imports experiments)
    latentcomm.integrations <- the core, actors (nothing imports integrations; only they import langgraph and a2a)

No module imports ``latentcomm.cli.main`` (the entry point imports the commands, never the reverse), and the
module-level imports form no cycle.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"latentcomm": "latentcomm", "protocols": "latentcomm.protocols", "actors": "latentcomm.actors",
           "training": "latentcomm.training", "benchmarks": "latentcomm.benchmarks",
           "experiments": "latentcomm.experiments", "integrations": "latentcomm.integrations"}
OUTER = ("latentcomm.actors", "latentcomm.training", "latentcomm.benchmarks", "latentcomm.experiments",
         "latentcomm.integrations")
FORBIDDEN = {
    "latentcomm": OUTER,
    "latentcomm.protocols": OUTER,
    "latentcomm.actors": ("latentcomm.training", "latentcomm.benchmarks", "latentcomm.experiments",
                          "latentcomm.integrations"),
    "latentcomm.training": ("latentcomm.actors", "latentcomm.benchmarks", "latentcomm.experiments",
                            "latentcomm.integrations"),
    "latentcomm.benchmarks": ("latentcomm.experiments", "latentcomm.integrations"),
    "latentcomm.experiments": ("latentcomm.integrations",),
    "latentcomm.integrations": ("latentcomm.training", "latentcomm.benchmarks", "latentcomm.experiments"),
}
FRAMEWORKS = ("langgraph", "a2a")
"""The agent frameworks of the optional extras: only ``latentcomm.integrations`` imports them."""


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module."""
    target: str
    """The imported module (or, for ``from m import name``, ``m.name`` when that is a module of ours, else ``m``)."""
    at_load: bool
    """Executed when the importing module loads (not inside a function or an ``if TYPE_CHECKING:`` block)."""
    line: int


SUBPACKAGES = ("model", "engine", "runtime", "http", "tasks", "cli")
"""The core's subpackages, innermost first."""
CORE_ALLOWED = {
    "latentcomm.model": (),
    "latentcomm.engine": ("latentcomm.model", "latentcomm.protocols"),
    "latentcomm.runtime": ("latentcomm.engine",),
    "latentcomm.http": ("latentcomm.protocols",),
    "latentcomm.tasks": (),
    "latentcomm.cli": ("latentcomm.model", "latentcomm.engine", "latentcomm.runtime", "latentcomm.http",
                       "latentcomm.tasks", "latentcomm.protocols"),
}
"""What each core subpackage may import besides itself and the base modules (``latentcomm.<module>``)."""


def _modules() -> dict[str, Path]:
    modules = {}
    folders = {**FOLDERS, **{f"latentcomm/{sub}": f"latentcomm.{sub}" for sub in SUBPACKAGES},
               "actors/job": "latentcomm.actors.job"}
    for folder, package in folders.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


MODULES = _modules()


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, at_load: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, False)
            elif isinstance(child, ast.Import):
                found.extend(Import(module, a.name, at_load, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = _package_of(module, path).split(".")
                    package = package[:len(package) - child.level + 1]
                    base = ".".join(package + ([base] if base else []))
                for alias in child.names:
                    name = f"{base}.{alias.name}"
                    found.append(Import(module, name if name in MODULES else base, at_load, child.lineno))
            else:
                visit(child, at_load)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def _package(module: str) -> str:
    for package in ("latentcomm.protocols", *OUTER):
        if module == package or module.startswith(package + "."):
            return package
    return "latentcomm"


def _within(target: str, packages: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in packages)


def test_every_package_is_scanned():
    assert {_package(m) for m in MODULES} == set(FORBIDDEN)
    assert len(MODULES) > 40
    assert {m for m in MODULES if _package(m) == "latentcomm.experiments"} >= {
        "latentcomm.experiments.chain", "latentcomm.experiments.jepa"}



@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_allowed_import_directions(package):
    wrong = [f"{i.module}:{i.line} imports {i.target}" for m, found in IMPORTS.items() if _package(m) == package
             for i in found if _within(i.target, FORBIDDEN[package])]
    assert not wrong, f"{package} may not import {FORBIDDEN[package]}: {wrong}"


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[0] == "latentcomm" and parts[1] in SUBPACKAGES else None


def test_every_subpackage_is_scanned():
    assert {_subpackage(m) for m in MODULES} - {None} == set(CORE_ALLOWED)
    assert "latentcomm.model.embedder" in MODULES and "latentcomm.engine.replica" in MODULES


@pytest.mark.parametrize("subpackage", sorted(CORE_ALLOWED))
def test_allowed_directions_between_core_subpackages(subpackage):
    allowed = (subpackage, *CORE_ALLOWED[subpackage])
    wrong = [f"{i.module}:{i.line} imports {i.target}" for m, found in IMPORTS.items() if _subpackage(m) == subpackage
             for i in found if i.target.startswith("latentcomm.")
             and (_subpackage(i.target) is not None or _package(i.target) == "latentcomm.protocols")
             and not _within(i.target, allowed)]
    assert not wrong, f"{subpackage} may import only {allowed} and the base modules: {wrong}"


def test_base_modules_import_no_subpackage_but_the_model_for_testing():
    wrong = [f"{i.module}:{i.line} imports {i.target}" for m, found in IMPORTS.items()
             if _package(m) == "latentcomm" and _subpackage(m) is None and m != "latentcomm"
             for i in found if _subpackage(i.target) is not None
             and not (m == "latentcomm.testing" and _within(i.target, ("latentcomm.model",)))]
    assert not wrong


def test_ray_loads_only_inside_the_runtime_and_on_first_use():
    wrong = [f"{i.module}:{i.line} imports {i.target}" for m, found in IMPORTS.items()
             if _package(m) == "latentcomm" and _subpackage(m) != "latentcomm.runtime"
             for i in found if i.target.split(".")[0] == "ray"]
    assert not wrong


def test_only_the_integrations_import_the_agent_frameworks():
    wrong = [f"{i.module}:{i.line} imports {i.target}" for m, found in IMPORTS.items()
             if _package(m) != "latentcomm.integrations" for i in found if i.target.split(".")[0] in FRAMEWORKS]
    assert not wrong
    assert {m for m in MODULES if _package(m) == "latentcomm.integrations"} >= {
        "latentcomm.integrations.langgraph", "latentcomm.integrations.a2a", "latentcomm.integrations.local"}


def test_the_core_loads_without_ray_or_deepspeed():
    wrong = [f"{i.module}:{i.line} imports {i.target}" for m, found in IMPORTS.items()
             if _package(m) in ("latentcomm", "latentcomm.protocols")
             for i in found if i.at_load and i.target.split(".")[0] in ("ray", "deepspeed")]
    assert not wrong


def test_protocols_need_only_msgpack_and_numpy():
    allowed = set(sys.stdlib_module_names) | {"msgpack", "numpy"}
    wrong = [f"{i.module}:{i.line} imports {i.target}" for m, found in IMPORTS.items()
             if _package(m) == "latentcomm.protocols" for i in found
             if not i.target.startswith("latentcomm.protocols")
             and (i.target.startswith("latentcomm") or (i.at_load and i.target.split(".")[0] not in allowed))]
    assert not wrong


def test_nothing_imports_the_cli_entry_point():
    wrong = [f"{i.module}:{i.line}" for found in IMPORTS.values() for i in found
             if i.target == "latentcomm.cli.main" and i.module != "latentcomm.cli.__main__"]
    assert not wrong, f"command modules take their parser from latentcomm.cli.parser: {wrong}"


def test_module_level_imports_have_no_cycle():
    edges = {m: {i.target for i in found if i.at_load and i.target in MODULES and i.target != m}
             for m, found in IMPORTS.items()}
    state: dict[str, int] = {}

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target] if target in path else [module, target]
            if target not in state and (found := cycle_from(target, [*path, target])):
                return found
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            assert cycle_from(module, [module]) is None


def test_every_cli_command_names_a_module_with_main():
    from latentcomm.cli.main import BENCHMARKS, COMMANDS, EXPERIMENTS

    commands = [c for c in COMMANDS.values() if not c.subcommands] + list(BENCHMARKS.values()) + \
        list(EXPERIMENTS.values())
    assert COMMANDS["bench"].subcommands is BENCHMARKS and COMMANDS["experiment"].subcommands is EXPERIMENTS
    for command in commands:
        assert command.module in MODULES, command
        tree = ast.parse(MODULES[command.module].read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), command.module
        assert importlib.util.find_spec(command.module) is not None


def test_errors_share_one_root_and_keep_their_bases():
    from latentcomm import HeadMismatchError, LatentcommError, LatentError
    from latentcomm.errors import NoReplicaError, OrderingError
    from latentcomm.model.latent import LatentError as latent_error
    from latentcomm.model.embedder import HeadMismatchError as head_error
    from latentcomm.runtime.pool import NoReplicaError as pool_error

    assert (latent_error, head_error, pool_error) == (LatentError, HeadMismatchError, NoReplicaError)
    for error, base in ((LatentError, ValueError), (HeadMismatchError, ValueError), (NoReplicaError, RuntimeError),
                        (OrderingError, RuntimeError)):
        assert issubclass(error, LatentcommError) and issubclass(error, base)
    agent = (ROOT / "actors" / "agent.py").read_text()
    assert "from latentcomm.errors import OrderingError" in agent  # still importable from latentcomm.actors.agent


def test_module_paths_of_version_0_1_import_their_new_home():
    import importlib
    import warnings

    import latentcomm

    for old, new in latentcomm.MOVED.items():
        assert new in MODULES, new
        first = old not in sys.modules
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)
        assert module.__spec__.name == new, "the module keeps its own spec"
        assert [str(w.message) for w in caught] == ([f"{old} moved to {new}"] if first else [])
