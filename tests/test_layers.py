"""Imports run one way (DESIGN.md, "Packages and their borders"): `convert/` and `runtime/` take from `edgeft` only
the shared leaves, `convert/` never imports `runtime/`, and the leaves import nothing from edgeft but each other.

Read from the source with `ast`, so an import inside a function (where torch-free code hides its heavy imports)
counts as much as one at the top, and a relative import counts as the module it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# edgeft.data.normalize: the text form near-duplicates are judged on, which data check (edgeft.data.dedup) and the
# ladder's retrieval (runtime.retrieval) must share, or a pair data check calls a near-duplicate could be a shot.
# edgeft.data.messages: the one message schema (roles, tool calls) that serve, eval, chat and data check share.
# edgeft.data.pairs: preference pairs, read by training and by `eval --pairs` (runtime.pairs_eval) by one rule.
LEAVES = ("edgeft.errors", "edgeft.fsutil", "edgeft.data.io", "edgeft.data.messages", "edgeft.data.normalize",
          "edgeft.data.pairs")
# Importing a leaf runs the __init__ of every package above it, so those must stay leaves too.
LEAF_PACKAGES = ("edgeft", "edgeft.data")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) for every import in `source`, the code of `module`; `from X import Y` counts as X.Y when Y is
    a module of this repository, else as X."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                found.append((node.lineno, full if _is_module(full) else base))
    return found


def forbidden(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when the edge is allowed."""
    top = imported.split(".")[0]
    leaf = importer in LEAVES or importer in LEAF_PACKAGES
    if top == "edgeft" and imported not in LEAVES and (leaf or importer.split(".")[0] in ("convert", "runtime")):
        return f"takes {imported} from edgeft, which gives {'the leaves' if leaf else 'convert/ and runtime/'} " \
               f"only {', '.join(LEAVES)}"
    if leaf and top in ("convert", "runtime"):
        return f"is a shared leaf and imports {imported}"
    if importer.split(".")[0] == "convert" and top == "runtime":
        return f"imports {imported}: convert/ never imports runtime/ (runtime/ sits above it)"
    return None


def checked_files() -> list[Path]:
    files = sorted((ROOT / "convert").rglob("*.py")) + sorted((ROOT / "runtime").rglob("*.py"))
    for name in LEAVES + LEAF_PACKAGES:
        path = ROOT.joinpath(*name.split("."))
        files.append(path / "__init__.py" if path.is_dir() else path.with_suffix(".py"))
    return files


def violations(path: Path, source: str | None = None) -> list[str]:
    module = module_name(path)
    source = path.read_text(encoding="utf-8") if source is None else source
    found = imported_modules(source, module, path.name == "__init__.py")
    return [f"{path.relative_to(ROOT)}:{line}: {module} {why}"
            for line, imported in found if (why := forbidden(module, imported))]


def test_imports_run_one_way():
    files = checked_files()
    assert len(files) > 50 and all(path.is_file() for path in files)
    problems = [problem for path in files for problem in violations(path)]
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


def test_the_checker_sees_every_kind_of_import():
    """Each forbidden edge, written each way an import can be written, is caught and named with its line."""
    source = "\n".join([
        "import edgeft.merge",
        "from edgeft import identity",
        "from edgeft.errors import EdgeftError",  # allowed
        "from runtime import load",
        "def later():",
        "    from runtime.evaluate import run_eval",
        "    import edgeft.data.templates",
    ])
    found = violations(ROOT / "convert" / "quant" / "example.py", source)
    assert [problem.split(":")[1] for problem in found] == ["1", "2", "4", "6", "7"], found
    assert "edgeft.identity" in found[1] and "runtime.load" in found[2]
    assert violations(ROOT / "runtime" / "example.py", "from convert.safetensors_file import INDEX_NAME") == []
    assert violations(ROOT / "runtime" / "example.py", "from edgeft.data import dedup")
    leaf = violations(ROOT / "edgeft" / "fsutil.py",
                      "from convert.reader import open_weights\nfrom . import errors\nfrom .data import templates")
    assert [problem.split(":")[1] for problem in leaf] == ["1", "3"], leaf
    assert "edgeft.data.templates" in leaf[1]
