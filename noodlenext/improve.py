"""python -m noodlenext.improve run=<dir>: which fix helps? (noodlenext.runs.improve_task)"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from noodlenext.core.config import CONFIG_DIR
from noodlenext.runs.improve_task import improve


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="improve")
def main(cfg: DictConfig) -> None:
    data = improve(cfg)
    table = Table(title=f"Which fix helps? ({cfg.paths.output_dir}/improve.md)")
    for column in ("fix", "what", "verdict"):
        table.add_column(column)
    for fix in data["fixes"]:
        table.add_row(fix["fix"]["name"], fix["fix"]["what"], data["verdicts"][fix["fix"]["name"]])
    Console().print(table)
    if data.get("best"):
        print(f"best: {data['best']}\n  {data['reproduce']}")
    elif data.get("detectable"):
        print(data["detectable"])


if __name__ == "__main__":
    main()
