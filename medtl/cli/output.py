"""What the command line prints: results and tables on stdout (never truncated: names and paths stay whole, so
they can be copied back), lists of unreadable files on stderr."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from medtl.data.audit import AuditReport
    from medtl.evaluation.records import RunMetrics

console = Console()


def say(text: str) -> None:
    """One message on stdout; never re-wrapped, so a long path stays on one line and can be copied."""
    console.print(text, soft_wrap=True, highlight=False)


def print_metrics(metrics: "RunMetrics") -> None:
    """Each split's metrics, as `medtl train` ends."""
    from medtl.evaluation.report import format_metrics

    for split, m in metrics.splits.items():
        print(format_metrics(split, m))
    by_patient = metrics.patient_level or {}
    for split, m in (by_patient.get("splits") or {}).items():
        print(format_metrics(f"{split} per patient ({by_patient['rule']})", m))


def list_failures(failed: dict[str, str]) -> None:
    """One line per unreadable file on stderr (full paths, never truncated)."""
    if failed:
        print(f"{len(failed)} unreadable files skipped:", file=sys.stderr)
        for path, reason in failed.items():
            print(f"  {path}: {reason}", file=sys.stderr)


def show_table(title: str, header: list[str], rows: list[list[str]], caption: str = "", right: bool = False) -> None:
    """Print a table whose cells are never cut short. The first column holds names a user types back: never
    folded or wrapped; other cells fold onto a second line on a narrow terminal. Boxed on a terminal; piped
    or redirected, plain columns with no trailing spaces (for grep, cut, awk)."""
    plain = not console.is_terminal
    table = Table(title=None if plain else title, caption=None if plain else caption or None,
                  box=None if plain else box.HEAVY_HEAD, pad_edge=not plain, header_style="bold")
    for i, name in enumerate(header):
        table.add_column(name, overflow="fold", no_wrap=i == 0, justify="right" if right and i else "left",
                         min_width=max(len(r[0]) for r in [header, *rows]) if i == 0 else None)
    for row in rows:
        table.add_row(*row)
    if not plain:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()) + (f"\n{caption}" if caption else ""))


def print_audit(r: "AuditReport") -> None:
    """The audit's class balance table and its findings, one line each."""
    rows = [[split, *[str(counts[c]) for c in r.classes]] for split, counts in r.balance.items()]
    show_table(f"audit: {r.images} images", ["split", *r.classes], rows, right=True)
    dup = r.exact_duplicates
    cross = sum(len(g["splits"]) > 1 for g in dup)
    near_cross = sum(len(p["splits"]) > 1 for p in r.near_duplicates)
    say(f"unreadable: {len(r.unreadable)}; byte-identical groups: {len(dup)} ({cross} across splits); "
        f"near-duplicate pairs: {len(r.near_duplicates)} ({near_cross} across splits)")
    for s in r.shortcuts:
        say(f"class-correlated {s['property']}: {s['by_class']}")
