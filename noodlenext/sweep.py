"""python -m noodlenext.sweep <sweep dir>: rebuild the comparison of a sweep that was cut short."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from noodlenext.callbacks.sweep_comparison import write_comparison


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO)
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.exit("usage: python -m noodlenext.sweep <sweep dir>")
    write_comparison(Path(args[0]))


if __name__ == "__main__":
    main()
