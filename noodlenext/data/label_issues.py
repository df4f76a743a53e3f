"""Which labels are wrong? `python -m noodlenext.data.label_issues <sweep dir> [--filter-by ...]`.

Reads the out-of-fold predictions of a cross-validation (`python -m noodlenext.train
experiment=crossval`; each job writes its held-out fold's oof_probs.csv), asks cleanlab which given
labels they contradict, prints the most suspect ones and writes label_issues.csv, label_issues.txt
(for the data doctor's `fix=quarantine files=`) and clean_files.txt (for `data.file_list=`) in the sweep
directory.

This module is only the command line; the library is data/confident_learning.py. Nothing imports it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from noodlenext.data.confident_learning import FILTERS, write_label_issues


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m noodlenext.data.label_issues",
        description="Find likely wrong labels from a crossval sweep's out-of-fold predictions (cleanlab).",
    )
    parser.add_argument(
        "sweep_dir", help="the sweep directory of experiment=crossval (multirun/crossval/<id>)"
    )
    parser.add_argument(
        "repeats",
        nargs="*",
        help="more crossval sweeps of the same data (another data.split_seed): their out-of-fold "
        "probabilities are averaged with the first's (an ensemble; the files are written to the first)",
    )
    parser.add_argument(
        "--filter-by",
        default="prune_by_noise_rate",
        choices=FILTERS,
        help="cleanlab's filter (cleanlab.filter.find_label_issues); default: %(default)s",
    )
    parser.add_argument("--show", type=int, default=20, help="how many of the most suspect to print")
    parser.add_argument("--out-dir", default=None, help="where to write the files; default: the sweep dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        result = write_label_issues(
            args.sweep_dir, filter_by=args.filter_by, out_dir=args.out_dir, repeats=args.repeats
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    console = Console()
    table = Table(title=f"{len(result.issues)} likely label issue(s) of {result.checked} train/ images")
    for column in ("rank", "file", "given", "likely", "score"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for rank, issue in enumerate(result.issues[: args.show], start=1):
        table.add_row(str(rank), issue.file, issue.given, issue.likely, f"{issue.score:.3f}")
    console.print(table)
    pairs = Counter((i.given, i.likely) for i in result.issues)
    for (given, likely), n in pairs.most_common():
        console.print(f"  {n:4d} labelled {given}, look like {likely}")
    print(f"table: {result.csv}")
    print(f"flagged files: {result.issues_list}")
    print(
        f"  move them aside: python -m noodlenext.data.check root={result.root} fix=quarantine "
        f"fix_kinds=[] files={result.issues_list}"
    )
    print(f"  or train without them: data.file_list={result.clean_list} ({result.kept} images kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
