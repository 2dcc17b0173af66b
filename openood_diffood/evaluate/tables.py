"""The one table formatter of the package and its benchmarks: aligned text for terminals, GitHub markdown for
results files (both through ``tabulate``; cells are shown as given, never re-parsed as numbers)."""
from __future__ import annotations

from typing import Any, Sequence

from tabulate import tabulate


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """``rows`` under ``header``; the first column left-aligned, the others right-aligned."""
    align = ("left",) + ("right",) * (len(header) - 1)
    return tabulate([[str(c) for c in r] for r in rows], headers=list(header), disable_numparse=True,
                    tablefmt="github" if markdown else "plain", colalign=align)
