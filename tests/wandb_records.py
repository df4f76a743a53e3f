"""Read an offline W&B run file (`run-<id>.wandb`) back: the test suite checks what users would upload.

W&B ships no reader for it: it is a LevelDB-style log (32 KiB blocks, each record a 7-byte header of
crc32c, length and chunk type) after a 7-byte `:W&B` header, holding protobuf `Record`s.
"""

from __future__ import annotations

from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == FULL:
            records.append(payload)
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            records.append(pending + payload)
    out = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def history_keys(records: list[wandb_internal_pb2.Record]) -> set[str]:
    """Every metric key logged with run.log()."""
    return {
        item.key or "/".join(item.nested_key)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    }


def run_info(records: list[wandb_internal_pb2.Record]) -> wandb_internal_pb2.RunRecord:
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def config_keys(records: list[wandb_internal_pb2.Record]) -> set[str]:
    return {
        item.key or "/".join(item.nested_key)
        for r in records
        if r.WhichOneof("record_type") in ("config", "run")
        for item in (r.config.update if r.WhichOneof("record_type") == "config" else r.run.config.update)
    }
