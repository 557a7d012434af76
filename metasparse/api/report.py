"""Plain-text tables of results (the command line's and the demo's)."""
from __future__ import annotations

from typing import Any, List, Sequence

__all__ = ["text_table"]


def text_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces, a dashed line under the header."""
    rows = [list(r) for r in rows]
    header = list(header)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines: List[str] = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(lines)
