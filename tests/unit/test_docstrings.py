"""Every runtime module (`onnxfn` minus `onnxfn.tools`) has a module docstring, and every public class,
function, method and property it defines has one written in the source. Offenders are listed as
`module:qualname`."""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
from types import ModuleType

import onnxfn

TOOLS = "onnxfn.tools"


def runtime_modules() -> list[ModuleType]:
    """`onnxfn` and every module under it, `onnxfn.tools` and its sub-modules left out (never imported)."""
    found, packages = [onnxfn], [onnxfn]
    while packages:
        package = packages.pop()
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if info.name == TOOLS or info.name.startswith(TOOLS + "."):
                continue
            module = importlib.import_module(info.name)
            found.append(module)
            if info.ispkg:
                packages.append(module)
    return sorted(found, key=lambda m: m.__name__)


MODULES = runtime_modules()


def class_nodes(module: ModuleType) -> dict[str, ast.ClassDef]:
    """The module's class statements by qualified name (nested classes too)."""
    nodes: dict[str, ast.ClassDef] = {}

    def walk(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                nodes[prefix + node.name] = node
                walk(node.body, prefix + node.name + ".")

    walk(ast.parse(inspect.getsource(module)).body, "")
    return nodes


def dataclass_default_doc(cls: type) -> str | None:
    """What `dataclasses` puts in `__doc__` when the class has none: "Name(field: type, ...)"."""
    try:
        return cls.__name__ + str(inspect.signature(cls)).replace(" -> None", "")
    except (TypeError, ValueError):
        return None


def class_documented(cls: type, nodes: dict[str, ast.ClassDef]) -> bool:
    """A docstring in the class statement itself; without the statement at hand, a `__doc__` that is
    neither empty nor the dataclass's generated one."""
    node = nodes.get(cls.__qualname__)
    if node is not None:
        return bool((ast.get_docstring(node) or "").strip())
    doc = (cls.__dict__.get("__doc__") or "").strip()
    return bool(doc) and doc != dataclass_default_doc(cls)


def function_of(member) -> object | None:
    """The function behind a class member (method, static or class method, property, cached property);
    None for members that are not code (constants, fields' defaults)."""
    if isinstance(member, (staticmethod, classmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    if isinstance(member, functools.cached_property):
        return member.func
    if inspect.isfunction(member):
        return member
    return None


def undocumented(module: ModuleType) -> list[str]:
    """`module:qualname` for each public class, function, method or property of `module` without a docstring."""
    nodes = class_nodes(module)
    missing: list[str] = []

    def check_class(cls: type) -> None:
        if not class_documented(cls, nodes):
            missing.append(f"{module.__name__}:{cls.__qualname__}")
        for name, member in vars(cls).items():
            if name.startswith("_"):
                continue
            if inspect.isclass(member) and member.__module__ == module.__name__:
                check_class(member)
                continue
            function = function_of(member)
            if function is not None and not (function.__doc__ or "").strip():
                missing.append(f"{module.__name__}:{cls.__qualname__}.{name}")

    seen: set[int] = set()
    for name, obj in vars(module).items():
        if name.startswith("_") or id(obj) in seen:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__module__ != module.__name__:
            continue
        seen.add(id(obj))
        if inspect.isclass(obj):
            check_class(obj)
        elif not (obj.__doc__ or "").strip():
            missing.append(f"{module.__name__}:{obj.__qualname__}")
    return missing


def test_the_walk_finds_the_runtime_and_leaves_the_tools_out():
    names = {m.__name__ for m in MODULES}
    assert {"onnxfn", "onnxfn.bundles.manifest", "onnxfn.storage.store", "onnxfn.codecs.image"} <= names
    assert not [n for n in names if n == TOOLS or n.startswith(TOOLS + ".")]


def test_every_runtime_module_has_a_docstring():
    missing = [m.__name__ for m in MODULES if not (m.__doc__ or "").strip()]
    assert not missing, "runtime modules without a module docstring:\n" + "\n".join(missing)


def test_every_public_class_function_and_method_has_a_docstring():
    missing = [entry for module in MODULES for entry in undocumented(module)]
    assert not missing, (f"{len(missing)} public definition(s) of the runtime without a docstring:\n"
                         + "\n".join(missing))


def test_a_dataclass_without_a_docstring_counts_as_undocumented():
    from dataclasses import dataclass

    @dataclass
    class Point:
        x: int
        y: int = 0

    assert Point.__doc__ == dataclass_default_doc(Point)  # the generated form this test relies on
    assert not class_documented(Point, {})
