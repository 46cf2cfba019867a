"""What a source file imports, read from its syntax tree (the packaging tests' layer checks)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator


def imported_modules(path: Path) -> Iterator[str]:
    """Every module ``path`` imports by absolute name, at module level and inside functions alike."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module or ""
