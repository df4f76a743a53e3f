"""bench/gpu.sh's last step: the pieces' JSON, logs and exit codes merged into one JSON, and a short table.

    .venv/bin/python bench/gpu_report.py WORK_DIR OUT.json [--smoke 0|1] [--cuda 0|1] [--seconds N]

WORK_DIR holds, per piece NAME: NAME.json (what the benchmark wrote), NAME.log, NAME.status ("rc seconds
limit") or NAME.skipped (the reason), and pytest_gpu.xml (JUnit). Each piece's status: ok, skipped (no CUDA
GPU, or left out of a smoke run), timeout (stopped at its limit; its JSON has what it measured until then)
or failed (the log's last lines are kept).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

PIECES = ("train_eager", "train_compiled", "scorecam", "llm", "loader", "pytest_gpu")


def read_piece(work: Path, name: str) -> dict[str, Any]:
    if (work / f"{name}.skipped").is_file():
        return {"status": "skipped", "reason": (work / f"{name}.skipped").read_text().strip()}
    if not (work / f"{name}.status").is_file():
        return {"status": "missing"}
    rc, seconds, limit = (int(v) for v in (work / f"{name}.status").read_text().split())
    status = "ok" if rc == 0 else "timeout" if rc in (124, 137) else "failed"
    piece: dict[str, Any] = {"status": status, "rc": rc, "seconds": seconds, "limit_s": limit}
    result = work / f"{name}.json"
    if result.is_file():
        try:
            piece["result"] = json.loads(result.read_text())
        except json.JSONDecodeError as e:  # cut off mid-write by the limit
            piece["result_error"] = str(e)
    if name == "pytest_gpu" and (work / "pytest_gpu.xml").is_file():
        suite = ET.parse(work / "pytest_gpu.xml").getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        attrs = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        attrs["passed"] = attrs["tests"] - attrs["failures"] - attrs["errors"] - attrs["skipped"]
        piece["result"] = attrs
        if rc == 5:  # pytest: no test collected
            piece["status"] = "failed"
    log = work / f"{name}.log"
    if status != "ok" and log.is_file():
        piece["log_tail"] = log.read_text(errors="replace").splitlines()[-15:]
    return piece


def headline(name: str, piece: dict[str, Any]) -> str:
    """The piece's main numbers, in one line."""
    r = piece.get("result")
    if piece["status"] == "skipped":
        return piece["reason"]
    if not r:
        return "; ".join(piece.get("log_tail", [])[-1:]) or "no result"
    try:
        if name.startswith("train_"):
            parts = []
            for mode in ("eager", "compiled"):
                if mode in r:
                    m = r[mode]
                    parts.append(
                        f"{mode}: plain {m['plain_img_s']:.0f}, Lightning {m['lightning_img_s']:.0f} img/s "
                        f"(overhead {m['overhead']:+.1%})"
                    )
            return f"{r['model']} {r['image_size']} px b{r['batch_size']}: " + "; ".join(
                parts or ["no mode done"]
            )
        if name == "scorecam":
            return (
                f"{r['model']} {r['image_size']} px: grad-cam {r['grad_cam_s_per_image']:.2f} s/img, ours "
                f"{r['ours_s_per_image']:.2f} s/img ({r['speedup']:.2f}x, r {r['pearson_r_min']:.4f}), floor "
                f"{r['floor_s_per_image']:.2f}"
            )
        if name == "llm":
            runs = r["runs"]
            text = ", ".join(f"{k} {v['tok_s']:.0f} tok/s" for k, v in runs.items())
            return f"{r['model']} ({r['parameters_m']:.1f}M, {r['dtype']}): {text}"
        if name == "loader":
            p = r["photos"]
            rows = p["rows"]
            plain = rows["plain: Image.open().convert('RGB') + write-up stack"]
            ours = rows["ours: draft decode + write-up stack"]
            cached = rows["ours, data.cache=resized: later epochs"]
            gpu = p["decode_on_device"]
            decode = f"{gpu['img_s']:.0f} img/s" if "img_s" in gpu else "skipped"
            return (
                f"{p['photo_size'][0]}x{p['photo_size'][1]}, img/s per core: plain "
                f"{plain['per_core_img_s']:.1f}, ours {ours['per_core_img_s']:.1f} ({ours['vs_plain']:.2f}x, "
                f"{ours['cores_to_feed']:.0f} cores for {p['feed_img_s']:.0f} img/s), cached "
                f"{cached['per_core_img_s']:.0f}; decode=gpu {decode}"
            )
        if name == "pytest_gpu":
            return f"{r['passed']} passed, {r['failures'] + r['errors']} failed, {r['skipped']} skipped"
    except (KeyError, TypeError) as e:
        return f"partial result ({type(e).__name__}: {e})"
    return json.dumps(r)[:120]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--smoke", type=int, default=0)
    p.add_argument("--cuda", type=int, default=0)
    p.add_argument("--seconds", type=int, default=0)
    args = p.parse_args(argv)
    pieces = {name: read_piece(args.work, name) for name in PIECES}
    found = [(piece.get("result") or {}).get("device") for piece in pieces.values()]
    device = next((d for d in found if d), "no CUDA GPU" if not args.cuda else "CUDA GPU")
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "smoke": bool(args.smoke),
        "cuda": bool(args.cuda),
        "device": device,
        "host": platform.node(),
        "python": sys.version.split()[0],
        "total_seconds": args.seconds,
        "pieces": pieces,
    }
    if not args.cuda and not args.smoke:
        report["note"] = (
            "no CUDA GPU visible: every GPU piece was skipped (bench/gpu.sh --smoke runs them tiny)"
        )
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    kind = "smoke run (tiny sizes)" if args.smoke else "GPU run"
    print(f"\n### bench/gpu.sh, {report['date']}, {kind}, {device}, {args.seconds} s in all\n")
    print("| piece | status | seconds | numbers |")
    print("|---|---|---|---|")
    for name, piece in pieces.items():
        seconds = f"{piece['seconds']} / {piece['limit_s']}" if "seconds" in piece else "-"
        print(f"| {name} | {piece['status']} | {seconds} | {headline(name, piece)} |")
    print(f"\nwrote {args.out}")
    bad = [n for n, piece in pieces.items() if piece["status"] in ("failed", "missing")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
