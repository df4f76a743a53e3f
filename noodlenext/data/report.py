"""Printing a data doctor's report: a table per split and class, then the findings, most severe first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from noodlenext.data.rules import CheckReport


def split_table(report: CheckReport, split: str) -> Any:
    """class | images | share | median WxH | smallest | formats | modes, for one split (rich Table)."""
    from rich.table import Table  # rich only when printing

    s = report.stats()[split]
    table = Table(title=f"{split}: {s['images']} readable image(s)")
    for column in ("class", "images", "share", "median WxH", "smallest", "formats", "modes"):
        table.add_column(column, justify="right" if column in ("images", "share") else "left")
    for cls, v in s["classes"].items():
        smallest = v["smallest"]
        table.add_row(
            cls,
            str(v["count"]) + (f" (+{v['unreadable']} bad)" if v["unreadable"] else ""),
            f"{100 * v['share']:.1f}%",
            "x".join(map(str, v["median_size"])) if v["median_size"] else "-",
            f"{smallest['size'][0]}x{smallest['size'][1]} {Path(smallest['file']).name}" if smallest else "-",
            ", ".join(f"{k} {n}" for k, n in v["formats"].items()),
            ", ".join(f"{k} {n}" for k, n in v["modes"].items()),
        )
    return table


def print_report(report: CheckReport, max_findings: int = 40) -> None:
    """The tables, then the first max_findings findings, most severe first (the JSON report has all)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    for split in report.stats():
        console.print(split_table(report, split))
    if report.clean:
        console.print(f"[green]clean:[/green] no problems found in {len(report.files)} file(s)")
        return
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.kinds().items()))
    console.print(f"[b]{len(report.findings)} finding(s):[/b] {counts}")
    for f in report.findings[:max_findings]:
        console.print(
            f"[{colour[f.severity]}]{f.severity:7}[/] {f.kind:16} {escape(f.message)}", highlight=False
        )
    if len(report.findings) > max_findings:
        console.print(f"... and {len(report.findings) - max_findings} more in the JSON report")
