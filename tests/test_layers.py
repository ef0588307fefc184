"""The layout is the architecture: data flows one way, and no layer imports one above it.

The server (``flowboard.server``: HTTP, WebSockets, the publisher) sits on top of the core
(model, aggregate, protocol, store, ingest, scaleout); only the entry points (``cli``,
``__main__``) import it. Read from the source with ``ast``, so that an import inside a function
counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flowboard"
#: The modules allowed to import the server: those that start it.
ENTRY_POINTS = {"flowboard.cli", "flowboard.__main__"}


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(root: Path, path: Path) -> set[str]:
    """Every module ``path`` imports, by absolute name (relative imports resolved)."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # ``from flowboard import server`` imports the server too.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def server_importers(root: Path) -> dict[str, list[str]]:
    """Modules under ``root`` (the package) that import the server, and what of it."""
    offenders: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(root, path)
        if name.startswith("flowboard.server") or name in ENTRY_POINTS:
            continue
        wrong = sorted(
            module
            for module in imported_modules(root, path)
            if module == "flowboard.server" or module.startswith("flowboard.server.")
        )
        if wrong:
            offenders[name] = wrong
    return offenders


def test_nothing_below_the_server_imports_it() -> None:
    """No module of the core (aggregate, protocol, store, ingest, scaleout, ...) imports
    ``flowboard.server``: scale-out extends publishing through the hub's listener hook and takes
    the running server as a protocol, instead of importing the server's hub and runtime."""
    assert server_importers(PACKAGE) == {}


def test_the_import_check_sees_every_form_of_import(tmp_path: Path) -> None:
    """The check itself: ``import``, ``from ... import``, ``from flowboard import server`` and a
    relative import inside a function all count; the server's own modules and the entry
    points may import it."""
    root = tmp_path / "flowboard"
    for folder in ("scaleout", "server"):
        (root / folder).mkdir(parents=True)
    (root / "scaleout" / "a.py").write_text("import flowboard.server.hub\n")
    (root / "scaleout" / "b.py").write_text("from flowboard.server.runtime import Runtime\n")
    (root / "scaleout" / "c.py").write_text("from flowboard import server\n")
    (root / "scaleout" / "d.py").write_text("def later():\n    from ..server import app\n")
    (root / "scaleout" / "e.py").write_text("from flowboard.aggregate import events\n")
    (root / "server" / "hub.py").write_text("from flowboard.server import connection\n")
    (root / "cli.py").write_text("from flowboard.server.pipeline import run_server\n")
    assert server_importers(root) == {
        "flowboard.scaleout.a": ["flowboard.server.hub"],
        "flowboard.scaleout.b": ["flowboard.server.runtime", "flowboard.server.runtime.Runtime"],
        "flowboard.scaleout.c": ["flowboard.server"],
        "flowboard.scaleout.d": ["flowboard.server", "flowboard.server.app"],
    }
