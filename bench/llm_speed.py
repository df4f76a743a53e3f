"""LLM answer speed: our TransformersBackend vs plain eager `model.generate`, same model, same process.

    .venv/bin/python bench/llm_speed.py                      # CPU: a tiny random Gemma 3 (tests/tiny_llms.py)
    .venv/bin/python bench/llm_speed.py --gemma3-4b-shaped   # GPU: Gemma 3 4B's shapes, random weights

Ours is TransformersBackend with its defaults: on CUDA bf16, a static KV cache and the compiled decoding
step, and `--batch` conversations in one `generate`; on CPU (where it leaves both off) only the batching
differs. The reference is what one writes first: `model.generate` with the dynamic cache, eager, on the same
loaded model and the same inputs. Every answer is exactly `--new-tokens` long (min_new_tokens: random weights
would stop at random), so tokens/s compare. Batch 1 is one conversation; batch N counts all N answers'
tokens. The first call of each (torch.compile's warm-up, seconds to minutes) is timed apart, then the best
of `--repeats`. `--gemma3-4b-shaped` writes the 8.6 GB model to a temporary folder and loads it back.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from machine import device_name
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny models' builder
from tiny_llms import CORPUS, gemma3_config, save_gemma3  # noqa: E402

from noodlenext.llm.base import Message, text_only  # noqa: E402
from noodlenext.llm.transformers_backend import TransformersBackend  # noqa: E402

# google/gemma-3-4b-it's shapes: text decoder and SigLIP-So400m vision tower (4.3B parameters).
GEMMA3_4B = {
    "vocab_size": 262_208,
    "hidden_size": 2560,
    "intermediate_size": 10_240,
    "num_hidden_layers": 34,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "sliding_window": 1024,
    "max_position_embeddings": 131_072,
    "image_size": 896,
    "patch_size": 14,
    "mm_tokens_per_image": 256,
    "vision": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
    },
}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def conversations(backend: TransformersBackend, n: int, text_tokens: int, image: Path) -> list[list[Message]]:
    """n conversations of one image and about `text_tokens` tokens of text, slightly different lengths."""
    out = []
    for i in range(n):
        words: list[str] = []
        while True:
            words.append(CORPUS[len(words) % (len(CORPUS) - 1)])
            messages = [
                {"role": "system", "content": "You are a helpful assistant."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "path": str(image)},
                        {"type": "text", "text": " ".join(words)},
                    ],
                },
            ]
            if backend.count_tokens(text_only(messages)) >= text_tokens - 3 * i:
                break
        out.append(messages)
    return out


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first call's seconds, best of `repeats` further calls)."""
    times = []
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:])


def load(args: argparse.Namespace, device: torch.device) -> tuple[TransformersBackend, float]:
    """Our backend on a random model written to a temporary folder (deleted once loaded); load seconds."""
    flag = {"auto": None, "on": True, "off": False}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.gemma3_4b_shaped:  # random weights drawn on the GPU, in bf16 (8.6 GB on disk)
            save_gemma3(Path(tmp), gemma3_config(**GEMMA3_4B), dtype=torch.bfloat16, device=str(device))
            torch.cuda.empty_cache()
        else:
            save_gemma3(Path(tmp), gemma3_config())
        backend = TransformersBackend(
            tmp,
            device=str(device),
            batch_size=args.batch,
            static_cache=flag[args.static_cache],
            compile=flag[args.compile],
        )
    return backend, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemma3-4b-shaped", action="store_true", help="Gemma 3 4B's shapes (for a GPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=None, help="text; default 300 (4B), 60 (tiny)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 128 (4B), 64 (tiny)")
    on_off = {"choices": ["auto", "on", "off"], "default": "auto", "help": "ours; auto: on for CUDA"}
    parser.add_argument("--static-cache", **on_off)
    parser.add_argument("--compile", **on_off)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the first; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; default: torch's")
    parser.add_argument("--json", type=Path, help="also write the numbers here (rewritten after each run)")
    args = parser.parse_args()
    big = args.gemma3_4b_shaped
    prompt_tokens = args.prompt_tokens or (300 if big else 60)
    new_tokens = args.new_tokens or (128 if big else 64)
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)

    ours, load_s = load(args, device)
    model, config = ours.model, ours.model.config
    model.generation_config.min_new_tokens = new_tokens  # both runs: answers of exactly new_tokens
    size = config.vision_config.image_size
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "photo.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8)).save(image)
        convs = conversations(ours, args.batch, prompt_tokens, image)

        def reference(batch: list[list[Message]]) -> torch.Tensor:
            with torch.inference_mode():
                inputs = {k: v.to(device) for k, v in ours.encode(batch).items()}
                return model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)

        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        lengths = [ours.count_tokens(c) for c in convs]
        print(f"# LLM answer speed, {datetime.datetime.now():%Y-%m-%d %H:%M}")
        print(f"device: {device_name(device)}")
        print(f"torch {torch.__version__}, transformers {transformers.__version__}")
        print(
            f"model: {'Gemma-3-4B-shaped' if big else 'tiny'} Gemma 3, {n_params:,.1f}M parameters, random "
            f"weights, {str(ours.dtype).removeprefix('torch.')}; written and loaded in {load_s:.0f} s"
        )
        print(
            f"prompts: {min(lengths)}-{max(lengths)} tokens including one {size} px image as "
            f"{config.mm_tokens_per_image} tokens; {new_tokens} new tokens per answer"
        )
        cache, compiled = ("on" if on else "off" for on in (ours.static_cache, ours.compile))
        print(f"ours: static cache {cache}, compile {compiled}, batch {args.batch} per generate call")

        rates: dict[str, dict[int, float]] = {}
        record: dict = {
            "date": datetime.datetime.now().isoformat(timespec="minutes"),
            "device": device_name(device),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "model": "gemma3-4b-shaped" if big else "tiny",
            "parameters_m": n_params,
            "dtype": str(ours.dtype).removeprefix("torch."),
            "load_s": load_s,
            "prompt_tokens": [min(lengths), max(lengths)],
            "new_tokens": new_tokens,
            "static_cache": ours.static_cache,
            "compile": ours.compile,
            "runs": {},
        }
        runs = {"eager generate": reference, "ours": lambda batch: ours.generate(batch, new_tokens)}
        for name, run in runs.items():
            rates[name] = {}
            for n in sorted({1, args.batch}):
                first, best = timed(lambda run=run, n=n: run(convs[:n]), args.repeats)
                rates[name][n] = n * new_tokens / best
                print(f"  {name}, batch {n}: first call {first:.2f} s, then {best:.2f} s")
                record["runs"][f"{name}, batch {n}"] = {
                    "first_s": first,
                    "best_s": best,
                    "tok_s": rates[name][n],
                }
                if args.json:  # after every run: a timeout later still leaves these numbers
                    args.json.write_text(json.dumps(record, indent=2) + "\n")
    ref, fast, b = rates["eager generate"], rates["ours"], args.batch
    print(f"{'':16}{'batch 1 tok/s':>15}{f'batch {b} tok/s':>15}")
    for name, r in rates.items():
        print(f"{name:16}{r[1]:15.1f}{r[b]:15.1f}")
    print(f"{'ours / eager':16}{fast[1] / ref[1]:14.2f}x{fast[b] / ref[b]:14.2f}x")
    print(f"ours at batch {b} vs eager one at a time: {fast[b] / ref[1]:.2f}x")
    if args.json:
        record["ratios"] = {
            "batch_1": fast[1] / ref[1],
            f"batch_{b}": fast[b] / ref[b],
            "batched_vs_one": fast[b] / ref[1],
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
