"""dvc.yaml deps match the code: every project file a stage's module can import is a dep of it.

`dvc repro` reruns a stage only when one of its deps changed, so a project file the stage runs
but does not list (say minimind/tokenizer.py, reached by sft through minimind/data/sft_tokens.py)
is a change DVC silently ignores. The check starts at `stages/<name>.py` for every stage whose
cmd is `python -m stages.<name>`, reads each module with `ast` (nothing is imported) and collects
every import in it: module level and inside functions (stages import lazily inside `main`),
except under `if TYPE_CHECKING:` (never runs). Each import resolves to project files under
minimind/, pipelines/ and stages/: `import a.b.c` runs `a/__init__.py`, `a/b/__init__.py` and
`a/b/c.py` (or `a/b/c/__init__.py`); `from a.b import c` also reaches `a/b/c.py` when `c` is a
submodule; relative imports resolve against the importing file's package. Reached files are
followed transitively. A reached file is covered when it, or a folder containing it, is among
the stage's deps.

Two deliberate rules:

- The imports OF pipelines/params.py are not followed (the file itself is reached, through
  pipelines/stage.py, and must be a dep). It imports every section's schema class so that all
  of params.yaml is validated before any work. Another section's schema can stop a stage from
  starting, but cannot change what it computes; following those imports would make every stage
  depend on nearly every module. The claim this rests on, that the schema of every params key a
  stage lists lives in code the walk reaches anyway, is checked by
  `test_listed_params_schemas_are_reached`: for each listed key (`sft`, `align_omni.max_len`,
  ...) the pydantic classes that validate it must be defined in reached modules (or in
  pipelines/params.py). For a whole section those are the class of `Params.<section>`, its
  project base classes and, recursively, the classes in its fields' annotations; for a dotted
  key, the classes along the path: at each step the containing class and the class declaring
  the field, ending with the classes in the last field's annotation.
- An `__init__.py` with no statement besides a docstring is ignored: importing it does nothing.
  One with code counts like any module (minimind/model/__init__.py registers the Auto classes).
"""

from __future__ import annotations

import ast
import inspect
import types
import typing
from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel

from tests.conftest import REPO

ROOTS = ("minimind", "pipelines", "stages")
NOT_FOLLOWED = frozenset({"pipelines/params.py"})
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def stage_module(spec: dict) -> str | None:
    """`stages.<name>` for a stage run as `python -m stages.<name>`, else None."""
    parts = str(spec.get("cmd", "")).split()
    if len(parts) == 3 and parts[:2] == ["python", "-m"] and parts[2].startswith("stages."):
        return parts[2]
    return None


@cache
def module_file(module: str) -> str | None:
    """Repo-relative path of a project module (`a/b.py` or `a/b/__init__.py`), None if none."""
    if module.split(".")[0] not in ROOTS:
        return None
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path.relative_to(REPO).as_posix()
    return None


@cache
def _tree(path: str) -> ast.Module:
    return ast.parse((REPO / path).read_text(encoding="utf-8"), filename=path)


def is_trivial_init(path: str) -> bool:
    """An `__init__.py` holding at most a docstring: importing it runs nothing."""
    if not path.endswith("__init__.py"):
        return False
    body = _tree(path).body
    return not body or (len(body) == 1 and isinstance(body[0], ast.Expr)
                        and isinstance(body[0].value, ast.Constant)
                        and isinstance(body[0].value.value, str))


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


class _Imports(ast.NodeVisitor):
    """Every module name an import statement of one file can load (TYPE_CHECKING blocks skipped)."""

    def __init__(self, path: str) -> None:
        parts = path.removesuffix(".py").split("/")
        self.package = parts[:-1]  # the package a relative import in this file starts from
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            anchor = self.package[:len(self.package) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        self.names.add(base)
        # `from pkg import name` loads pkg/name.py when name is a submodule (checked on resolve).
        self.names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def executed_files(module: str) -> set[str]:
    """The files importing (or `python -m`) `module` runs: it and its packages' `__init__.py`."""
    parts = module.split(".")
    files = {module_file(".".join(parts[:end])) for end in range(1, len(parts) + 1)}
    return {f for f in files if f is not None and not is_trivial_init(f)}


def imported_files(path: str) -> set[str]:
    """Project files the imports in `path` execute."""
    visitor = _Imports(path)
    visitor.visit(_tree(path))
    return set().union(*(executed_files(name) for name in visitor.names))


def reached_files(module: str) -> set[str]:
    """Every project file running `python -m <module>` can execute, following imports."""
    assert module_file(module), f"{module} is not a project module"
    seen: set[str] = set()
    todo = executed_files(module)
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        if file not in NOT_FOLLOWED:
            todo |= imported_files(file) - seen
    return seen


def covered(file: str, deps: list[str]) -> bool:
    listed = {str(dep).rstrip("/") for dep in deps}
    path = Path(file)
    return file in listed or any(parent.as_posix() in listed for parent in path.parents)


def missing_deps(spec: dict) -> list[str]:
    """Project files the stage's module reaches that its deps do not cover."""
    module = stage_module(spec)
    if module is None:
        return []
    deps = spec.get("deps") or []
    return sorted(f for f in reached_files(module) if not covered(f, deps))


def test_every_reached_file_is_a_dep() -> None:
    checked = [name for name, spec in STAGES.items() if stage_module(spec)]
    assert checked, "no `python -m stages.<name>` stage in dvc.yaml"
    problems = {name: missing_deps(STAGES[name]) for name in checked}
    problems = {name: files for name, files in problems.items() if files}
    report = "\n".join(f"  {name}: {', '.join(files)}" for name, files in problems.items())
    assert not problems, f"dvc.yaml deps miss project files their stage imports:\n{report}"


def test_checker_reports_a_missing_file() -> None:
    spec = dict(STAGES["sft"])
    spec["deps"] = [dep for dep in spec["deps"] if dep != "minimind/tokenizer.py"]
    assert "minimind/tokenizer.py" in missing_deps(spec)
    # A folder dep covers the files under it; a trivial __init__.py is never required.
    spec["deps"] = [*spec["deps"], "minimind"]
    assert "minimind/tokenizer.py" not in missing_deps(spec)
    assert is_trivial_init("minimind/__init__.py")
    assert "minimind/__init__.py" not in reached_files("stages.sft")
    assert "minimind/model/__init__.py" in reached_files("stages.sft")


# --- the schemas of a stage's params keys are in code the walk reaches --------------------------


def _models(annotation: object) -> set[type[BaseModel]]:
    """Project pydantic classes named anywhere in a type annotation (`list[Source] | None`...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation} if module_file(annotation.__module__) else set()
    out: set[type[BaseModel]] = set()
    if typing.get_origin(annotation) is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            out |= _models(arg)
    return out


def _bases(cls: type) -> set[type]:
    return {c for c in cls.__mro__ if issubclass(c, BaseModel) and module_file(c.__module__)}


def schema_classes(annotation: object, path: list[str], seen: set[type] | None = None) -> set[type]:
    """The classes that validate the value at `path` inside a field of type `annotation`."""
    seen = set() if seen is None else seen
    out: set[type] = set()
    for cls in _models(annotation):
        if path:
            name, rest = path[0], path[1:]
            assert name in cls.model_fields, f"{cls.__name__} has no field {name!r}"
            owner = next(c for c in cls.__mro__ if name in inspect.get_annotations(c))
            out |= {cls, owner}
            out |= schema_classes(cls.model_fields[name].annotation, rest, seen)
        elif cls not in seen:
            seen.add(cls)
            out |= _bases(cls)
            for field in cls.model_fields.values():
                out |= schema_classes(field.annotation, [], seen)
    return out


def listed_params_keys(spec: dict) -> list[str]:
    keys: list[str] = []
    for entry in spec.get("params") or []:
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict):  # {file: [keys]}; only params.yaml has a schema
            keys.extend(k for file, ks in entry.items() if file == "params.yaml" for k in ks or [])
    return keys


def test_listed_params_schemas_are_reached() -> None:
    from pipelines.params import Params

    problems = []
    for name, spec in STAGES.items():
        module = stage_module(spec)
        if module is None:
            continue
        reached = reached_files(module)
        for key in listed_params_keys(spec):
            section, *path = key.split(".")
            assert section in Params.model_fields, f"{name}: {key} is not a params section"
            classes = schema_classes(Params.model_fields[section].annotation, path)
            files = {module_file(cls.__module__) for cls in classes}
            unreached = sorted(f for f in files if f and f not in reached and f not in NOT_FOLLOWED)
            if unreached:
                problems.append(f"  {name}: {key} is validated by {', '.join(unreached)}")
    assert not problems, ("a stage's params schema lives in code the stage does not import, so "
                          "not following pipelines/params.py's imports is unsafe:\n"
                          + "\n".join(problems))
