"""Check the WebUI double (tests/webui_double/modules) against a real WebUI v1.10.1 checkout.

    python3 tests/real_webui/check_double_against_webui.py WEBUI_DIR

Only parses source (ast), so it needs no WebUI environment. For every module the double models
(tests/webui_double/modules/<path>.py -> WEBUI_DIR/modules/<path>.py, and the built-in Lora
extension's tests/webui_double/lora/<name>.py -> WEBUI_DIR/extensions-builtin/Lora/<name>.py, and
tests/webui_double/hypertile/hypertile.py -> WEBUI_DIR/extensions-builtin/hypertile/hypertile.py):

- every public function, class, method and class attribute the double defines exists in the real
  module (methods may come from a base class defined in the same real module; attributes may be
  set on self in the real class's methods), with the real default where both give one (which,
  for a dataclass, is its __init__'s default);
- signatures are compatible: the double's positional parameters are the real ones, in order (the
  double may leave out trailing real parameters that have defaults: a call it accepts is then
  valid in the real one too); keyword-only parameters exist in the real function; `*args` and
  `**kwargs` only where the real function has them; every default the double gives equals the real
  default;
- every public module-level attribute the double assigns exists in the real module;
- every option the double's shared.opts knows is an option of the real shared_options.py.

A double module may name what it adds on purpose (stand-ins for ldm/sgm/k-diffusion, recording
for tests) in a module-level `DOUBLE_ONLY = {"name", "Class.member", ...}`; those are skipped, and
a declared name that the real module does have is itself a mismatch (it must then be checked).
Prints every mismatch; exits 1 if there is any, 0 otherwise.
"""
from __future__ import annotations

import ast
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

DOUBLE_DIR = Path(__file__).resolve().parents[1] / "webui_double" / "modules"
LORA_DOUBLE_DIR = DOUBLE_DIR.parent / "lora"
SCOPES = (ast.If, ast.Try, ast.With)  # module-level blocks whose names are module attributes too


@dataclass
class ModuleNames:
    functions: dict[str, ast.FunctionDef]
    classes: dict[str, ast.ClassDef]
    attributes: set[str]
    imported: set[str]


def targets(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [name for element in node.elts for name in targets(element)]
    return []


def assigned(statement: ast.stmt) -> list[str]:
    if isinstance(statement, ast.Assign):
        return [name for target in statement.targets for name in targets(target)]
    if isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
        return targets(statement.target)
    return []


def flat(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements of a module or class body, with those inside if/try/with blocks."""
    out = []
    for statement in body:
        out.append(statement)
        if isinstance(statement, SCOPES):
            for block in ("body", "orelse", "finalbody"):
                out += flat(getattr(statement, block, []))
            for handler in getattr(statement, "handlers", []):
                out += flat(handler.body)
    return out


def names_of(tree: ast.Module) -> ModuleNames:
    names = ModuleNames({}, {}, set(), set())
    for statement in flat(tree.body):
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.functions[statement.name] = statement
        elif isinstance(statement, ast.ClassDef):
            names.classes[statement.name] = statement
        elif isinstance(statement, (ast.Import, ast.ImportFrom)):
            names.imported |= {(alias.asname or alias.name).split(".")[0] for alias in statement.names}
        names.attributes |= set(assigned(statement))
    return names


def is_accessor(fn: ast.FunctionDef) -> bool:
    """A property's setter or deleter (the getter is the member's signature)."""
    return any(isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter") for d in fn.decorator_list)


def instance_attributes(fn: ast.FunctionDef) -> set[str]:
    return {target.attr for node in ast.walk(fn) if isinstance(node, (ast.Assign, ast.AnnAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"}


def class_members(cls: ast.ClassDef) -> tuple[dict[str, ast.FunctionDef], set[str]]:
    """Methods (an alias such as `__enter__ = acquire` maps to its method) and attributes: class
    level, and those set on self in methods."""
    methods, attributes = {}, set()
    for statement in flat(cls.body):
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not is_accessor(statement):
                methods[statement.name] = statement
            attributes |= instance_attributes(statement)
        elif isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Name) \
                and statement.value.id in methods:
            methods.update({name: methods[statement.value.id] for name in assigned(statement)})
        attributes |= set(assigned(statement))
    return methods, attributes


def class_defaults(cls: ast.ClassDef) -> dict[str, str]:
    """Class-level `name: type = value` / `name = value` (a dataclass's field defaults)."""
    out = {}
    for statement in cls.body:
        if isinstance(statement, ast.AnnAssign) and statement.value is not None:
            out[statement.target.id] = ast.unparse(statement.value)
        elif isinstance(statement, ast.Assign) and len(statement.targets) == 1 \
                and isinstance(statement.targets[0], ast.Name):
            out[statement.targets[0].id] = ast.unparse(statement.value)
    return out


def real_class_default(real: ModuleNames, cls: ast.ClassDef, name: str) -> str | None:
    """The default of a class attribute, from the class or its same-module bases (nearest first)."""
    if name in class_defaults(cls):
        return class_defaults(cls)[name]
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in real.classes and base.id != cls.name:
            found = real_class_default(real, real.classes[base.id], name)
            if found is not None:
                return found
    return None


def real_member(real: ModuleNames, cls: ast.ClassDef, name: str, seen: frozenset = frozenset()):
    """(method or None, whether an attribute of that name exists) in cls or its same-module bases."""
    methods, attributes = class_members(cls)
    if name in methods or name in attributes:
        return methods.get(name), True
    for base in cls.bases:
        base_name = base.id if isinstance(base, ast.Name) else None
        if base_name in real.classes and base_name not in seen:
            found = real_member(real, real.classes[base_name], name, seen | {cls.name})
            if found[1]:
                return found
    return None, False


def is_public(name: str) -> bool:
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def default_map(fn: ast.FunctionDef) -> dict[str, str]:
    args = fn.args
    positional = args.posonlyargs + args.args
    out = {a.arg: ast.unparse(d) for a, d in zip(positional[len(positional) - len(args.defaults):], args.defaults)}
    out.update({a.arg: ast.unparse(d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
    return out


def signature_problems(double: ast.FunctionDef, real: ast.FunctionDef) -> list[str]:
    d, r = double.args, real.args
    d_pos, r_pos = [a.arg for a in d.posonlyargs + d.args], [a.arg for a in r.posonlyargs + r.args]
    r_defaults = default_map(real)
    problems = []
    if d_pos != r_pos[:len(d_pos)]:
        problems.append(f"positional parameters ({', '.join(d_pos)}) are not the real ({', '.join(r_pos)})")
    else:
        missing = [name for name in r_pos[len(d_pos):] if name not in r_defaults]
        if missing:
            problems.append(f"leaves out real parameters without defaults: {', '.join(missing)}")
    r_kwonly = {a.arg for a in r.kwonlyargs}
    for a in d.kwonlyargs:
        if a.arg not in r_kwonly and r.kwarg is None:
            problems.append(f"keyword-only parameter {a.arg!r} is not in the real function")
    if d.vararg is not None and r.vararg is None:
        problems.append(f"takes *{d.vararg.arg}; the real one takes no *args")
    if d.kwarg is not None and r.kwarg is None:
        problems.append(f"takes **{d.kwarg.arg}; the real one takes no **kwargs")
    for name, value in default_map(double).items():
        if name in r_defaults and r_defaults[name] != value:
            problems.append(f"default of {name!r} is {value}, the real one is {r_defaults[name]}")
        elif name not in r_defaults and (name in r_pos or name in r_kwonly):
            problems.append(f"gives {name!r} a default ({value}); the real one has none")
    return problems


def declared_double_only(tree: ast.Module) -> set[str]:
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and "DOUBLE_ONLY" in assigned(statement):
            return set(ast.literal_eval(statement.value))
    return set()


def compare_module(name: str, double_tree: ast.Module, real_tree: ast.Module) -> list[str]:
    double, real = names_of(double_tree), names_of(real_tree)
    own = declared_double_only(double_tree)
    problems = []

    def exists(qualified: str) -> bool:
        if "." not in qualified:
            return qualified in real.functions or qualified in real.classes or qualified in real.attributes \
                or qualified in real.imported
        cls_name, member = qualified.split(".", 1)
        return cls_name in real.classes and real_member(real, real.classes[cls_name], member)[1]

    for qualified in sorted(own):
        if exists(qualified):
            problems.append(f"{name}.{qualified}: declared DOUBLE_ONLY but the real module has it; model it instead")

    def check_function(qualified: str, fn: ast.FunctionDef, real_fn) -> None:
        if real_fn is None:
            problems.append(f"{name}.{qualified}: a function in the double, not one in the real module")
            return
        problems.extend(f"{name}.{qualified}: {p}" for p in signature_problems(fn, real_fn))

    for fn_name, fn in double.functions.items():
        if is_public(fn_name) and fn_name not in own:
            if fn_name not in real.functions and not exists(fn_name):
                problems.append(f"{name}.{fn_name}: not in the real module")
            else:
                check_function(fn_name, fn, real.functions.get(fn_name))
    for cls_name, cls in double.classes.items():
        if not is_public(cls_name) or cls_name in own:
            continue
        if cls_name not in real.classes:
            problems.append(f"{name}.{cls_name}: class not in the real module")
            continue
        methods, attributes = class_members(cls)
        for member in sorted(set(methods) | attributes):
            qualified = f"{cls_name}.{member}"
            if not is_public(member) or qualified in own:
                continue
            real_fn, found = real_member(real, real.classes[cls_name], member)
            if not found:
                problems.append(f"{name}.{qualified}: not in the real class")
            elif member in methods:
                check_function(qualified, methods[member], real_fn)
            elif member in class_defaults(cls):
                real_default = real_class_default(real, real.classes[cls_name], member)
                if real_default is not None and real_default != class_defaults(cls)[member]:
                    problems.append(f"{name}.{qualified}: default {class_defaults(cls)[member]}, "
                                    f"the real one is {real_default}")
    for attribute in sorted(double.attributes - set(double.functions) - set(double.classes)):
        if is_public(attribute) and attribute not in own and attribute != "DOUBLE_ONLY" and not exists(attribute):
            problems.append(f"{name}.{attribute}: module attribute not in the real module")
    return problems


def double_option_names(shared_tree: ast.Module) -> list[str]:
    """Keys of the dict the double's shared.opts is built from (Options({...}, ...))."""
    for node in ast.walk(shared_tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Options" and node.args \
                and isinstance(node.args[0], ast.Dict):
            return [ast.literal_eval(key) for key in node.args[0].keys]
    raise ValueError("the double's shared.py builds no options.Options({...})")


def real_option_names(shared_options_tree: ast.Module) -> set[str]:
    """Keys of every options_section(..., {...}) dict in shared_options.py."""
    names = set()
    for node in ast.walk(shared_options_tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "options_section":
            for arg in node.args:
                if isinstance(arg, ast.Dict):
                    names |= {key.value for key in arg.keys if isinstance(key, ast.Constant)}
    return names


def parse(path: Path) -> ast.Module:
    with warnings.catch_warnings():  # the real sources have invalid escape sequences in docstrings
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def modelled_modules(webui_dir: Path) -> list[tuple[Path, Path]]:
    """(double, real) source pairs."""
    pairs = [(path, webui_dir / "modules" / path.relative_to(DOUBLE_DIR))
             for path in sorted(DOUBLE_DIR.rglob("*.py")) if path.name != "__init__.py"]
    pairs += [(path, webui_dir / "extensions-builtin" / "Lora" / path.name) for path in sorted(LORA_DOUBLE_DIR.glob("*.py"))]
    pairs += [(DOUBLE_DIR.parent / "hypertile" / "hypertile.py", webui_dir / "extensions-builtin" / "hypertile" / "hypertile.py")]
    return pairs


def check(webui_dir: Path) -> list[str]:
    real_dir = webui_dir / "modules"
    if not (real_dir / "sd_unet.py").is_file():
        return [f"{webui_dir} is not a WebUI checkout (no modules/sd_unet.py)"]
    problems = []
    for double_path, real_path in modelled_modules(webui_dir):
        if not real_path.is_file():
            problems.append(f"{double_path.stem}: the real WebUI has no {real_path.relative_to(webui_dir)}")
            continue
        problems += compare_module(double_path.stem, parse(double_path), parse(real_path))
    real_options = real_option_names(parse(real_dir / "shared_options.py"))
    problems += [f"shared.opts: option {key!r} is not in the real shared_options.py"
                 for key in double_option_names(parse(DOUBLE_DIR / "shared.py")) if key not in real_options]
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    problems = check(Path(argv[1]))
    for problem in problems:
        print(problem)
    modelled = len(modelled_modules(Path(argv[1])))
    print(f"{len(problems)} mismatches in {modelled} modules of the double" if problems
          else f"the double matches {argv[1]} ({modelled} modules)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
