"""Shared fixtures: small image trees built on the fly, configs composed the way Hydra composes them, the
expensive things built once per session (a tiny checkpoint, the synthetic noodles, tiny language models,
SmolLM2 loaded), and the suite's own rules (docs/testing.md): a time limit per test, and an unmarked test
may neither start a process nor take more than 2 s."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

# Read once, when torch loads OpenMP (below, in this process, and in every process a test starts): an idle
# OpenMP thread sleeps instead of spinning. On a busy 2-core machine spinning threads take turns away from
# the ones with work (ScoreCAM of a tiny model: 3x the CPU time, 2x the wall time), and they would count as
# CPU time in the 2 s check below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402
from PIL import Image  # noqa: E402
from suite_rules import (  # noqa: E402, F401  the suite's rules (docs/testing.md): hooks pytest finds here
    pytest_collection_finish,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_unconfigure,
)

from noodlenext.core.config import CONFIG_DIR  # noqa: E402

# Under pytest-xdist (`-n 2`, the quick subset's command) each worker gets its share of the cores: two
# workers with a torch thread per core each would fight over them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the suite never reaches for a hub
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Gradio reads it at import (here, and in every process a test starts): no analytics, no version check.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

CLASSES = ("0_spaghetti", "1_ramen", "2_udon")


def write_image(
    path: Path, size: tuple[int, int] = (40, 32), seed: int = 0, mode: str = "RGB", **save: object
) -> Path:
    """A random image whose mean colour depends on the class folder, so a model can learn it."""
    rng = np.random.default_rng(seed)
    base = {"0_spaghetti": 60, "1_ramen": 130, "2_udon": 200}.get(path.parent.name, 128)
    arr = np.clip(rng.normal(base, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").convert(mode).save(path, **save)
    return path


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """make_tree({"train": 8, "test": 3}) -> root with <split>/<class>/*.png images."""

    def make(
        splits: dict[str, int], classes: Iterable[str] = CLASSES, size: tuple[int, int] = (40, 32)
    ) -> Path:
        root = tmp_path / "noodles"
        for split, n in splits.items():
            for c, cls in enumerate(classes):
                for i in range(n):
                    write_image(
                        root / split / cls / f"{i:03d}.png",
                        size,
                        seed=1000 * c + i + {"train": 0, "val": 300, "test": 600}.get(split, 900),
                    )
        return root

    return make


_hydra: list[object] = []  # the Hydra that compose_cfg initialized, while it is the global one


def _parse_config_files_once() -> None:
    """Hydra parses every YAML file of a composition again each time (PyYAML in pure Python: most of a
    composition's time, and the quick subset composes over 100 times). Here a config file of conf/ or of
    Hydra's own is parsed once per session and each composition gets a copy of it; a file that changed
    (size or mtime) is parsed again. Nothing else changes: Hydra composes from exactly these contents."""
    import copy
    import functools

    import hydra
    from omegaconf import OmegaConf

    roots = (Path(CONFIG_DIR).resolve(), Path(hydra.__file__).resolve().parent)
    load, parsed = OmegaConf.load, {}

    @functools.wraps(load)
    def parse_once(file_: Any) -> Any:
        name = getattr(file_, "name", file_)
        path = Path(name).resolve() if isinstance(name, (str, os.PathLike)) else None
        if path is None or not path.is_file() or not any(path.is_relative_to(r) for r in roots):
            return load(file_)
        stat = path.stat()
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key not in parsed:
            parsed[key] = load(file_)
        return copy.deepcopy(parsed[key])

    OmegaConf.load = parse_once  # type: ignore[method-assign]


_parse_config_files_once()


def _hydra_on_our_configs() -> None:
    """Hydra initialized on conf/, as for `python -m noodlenext.<task>`. Initializing costs more than
    composing, so it is done once and kept, unless something else (a command's main) replaced it."""
    current = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    if current is None or not _hydra or current is not _hydra[0]:
        GlobalHydra.instance().clear()
        initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR)  # stays initialized: no `with`
        _hydra[:] = [GlobalHydra.instance().hydra]


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a config like `python -m noodlenext.<task>` would, with outputs under tmp_path."""

    def make(config_name: str = "train", overrides: Iterable[str] = ()) -> DictConfig:
        _hydra_on_our_configs()
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.runtime.cwd = str(tmp_path)
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        return cfg

    yield make
    HydraConfig.instance().cfg = None  # the next test finds no run (nor a multirun) under way


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    they gain nothing from threads, and on a busy 2-core box OpenMP hand-offs cost 10-50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ConvNeXt-Atto checkpoint at 32 px (classes spaghetti, ramen, udon), untrained, saved as training
    saves one and read back through the real loading code by whoever uses it. Built once per session."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint") / "atto32.ckpt")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under root: a file's bytes, None for a folder (an added empty folder shows too)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def user_photos(root: Path, splits: Iterable[str] = ("train", "test"), per_class: int = 2) -> Path:
    """A user's ImageFolder as the README lays it out (JPEGs, class folders ramen and udon), nothing else."""
    for s, split in enumerate(splits):
        for c, cls in enumerate(("ramen", "udon")):
            for i in range(per_class):
                seed = 1000 * s + 100 * c + i
                write_image(root / split / cls / f"IMG_{i:04d}.jpg", (40, 32), seed=seed, quality=90)
    return root


# ------------------------------------------------------------------------------ built once per session
def save_tiny_checkpoint(
    path: Path, image_size: int = 32, names: Iterable[str] = ("spaghetti", "ramen", "udon"), seed: int = 0
) -> Path:
    """An untrained ConvNeXt-Atto checkpoint, saved as training saves one (state dict, hyper-parameters and
    what NoodleClassifier.on_save_checkpoint adds): load it through the real loading code."""
    from noodlenext.models.classifier import NoodleClassifier

    names = list(names)
    torch.manual_seed(seed)
    model = NoodleClassifier("convnext_atto", len(names), names, image_size=image_size, pretrained=False)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


# The shrunk quickstart's data (tests/test_train_e2e.py's SHRUNK): 12 synthetic images per class at 48 px.
SYNTHETIC = {"images_per_class": 12, "image_size": 48}
SYNTHETIC_ARGS = [f"data.synthetic.{key}={value}" for key, value in SYNTHETIC.items()]


@pytest.fixture(scope="session")
def synthetic_noodles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic noodles as the shrunk quickstart renders them (SYNTHETIC), once per session: pass it
    as data.root with SYNTHETIC_ARGS (a run finds the render complete and reuses it; with other
    data.synthetic.* it would render anew, there). Read only: write nothing into it."""
    from noodlenext.data.synthetic import render_dataset

    return render_dataset(tmp_path_factory.mktemp("synthetic") / "noodles", **SYNTHETIC)


@pytest.fixture(scope="session")
def tiny_llms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random chat models saved like hub checkpoints (tests/tiny_llms.py), once per session:
    `gemma3` (multimodal, 4 tokens per image), `llama` (text only, 1024 positions), `endless` (the Llama
    with 4096 positions, room for the page's prompt, that never ends an answer on its own), `root` (a
    photo.png and an overlay.png for their prompts)."""
    from PIL import Image
    from tiny_llms import save_endless_llama, save_tiny_gemma3, save_tiny_llama

    root = tmp_path_factory.mktemp("llms")
    Image.new("RGB", (48, 40), (200, 120, 40)).save(root / "photo.png")
    Image.new("RGB", (40, 40), (20, 20, 220)).save(root / "overlay.png")
    return {
        "gemma3": save_tiny_gemma3(root / "gemma3", mm_tokens_per_image=4),
        "llama": save_tiny_llama(root / "llama"),
        "endless": save_endless_llama(root / "endless"),
        "root": root,
    }


@pytest.fixture(scope="session")
def smollm2() -> Iterator[Any]:
    """SmolLM2-135M-Instruct through llama.cpp (GGUFBackend, n_ctx 2048, seed 0), loaded once per session.
    llama.cpp keeps the last prompt's KV cache: a test that compares generations resets it first
    (`backend.llama.reset()`)."""
    from noodlenext.llm.gguf_backend import GGUFBackend

    backend = GGUFBackend(model=None, n_ctx=2048, seed=0)
    yield backend
    backend.close()


# ------------------------------------------------------------------------------ commands in this process
def run_main(main: Callable[[], Any], *args: str, stdin: str | None = None) -> tuple[int, str]:
    """`python -m <command> args...` in this process: the command's Hydra `main` with `args` as its
    command line (hydra.run.dir among them, or it writes under outputs/) and `stdin`. Returns (exit
    status, what it printed and logged): 0 when main returned, else its SystemExit's code (1 with Hydra's
    error message for an exception, as the command line shows it). What a process would drop when it
    ends is undone afterwards: Hydra's logging set-up and config, a training run's lock, the environment."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from noodlenext.runs.resume import release_run_lock

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    argv, stdin_before, environ = sys.argv, sys.stdin, dict(os.environ)
    GlobalHydra.instance().clear()
    out = io.StringIO()
    sys.argv = [getattr(main, "__module__", "command"), *args]
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    status = 0
    try:
        with redirect_stdout(out), redirect_stderr(out):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code
                if isinstance(code, str):
                    print(code, file=sys.stderr)
                    code = 1
                status = int(code or 0)
    finally:
        sys.argv, sys.stdin = argv, stdin_before
        release_run_lock()  # a training run's lock on its run directory: a process would drop it at exit
        # What the run put in the environment: resume=auto's hand-over to DDP workers, W&B's service
        # address (a process started later would join this process's W&B service), the seed, ...
        os.environ.clear()
        os.environ.update(environ)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    logged = "".join(_log_files(args))
    return status, out.getvalue() + logged


def _log_files(args: Iterable[str]) -> list[str]:
    """What the command logged to its run directory's <job>.log (Hydra's file handler)."""
    run_dir = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
    if run_dir is None:
        return []
    return [p.read_text() for p in sorted(Path(run_dir).glob("*.log"))]


# ------------------------------------------------------------------------------ what the LLM path did
def model_answered(record: dict) -> bool:
    """A grounding record (chat.json's metadata) of an answer the language model did write: it passed the
    gate (first or second try), or both its drafts were rejected and the template stands in. False when
    the model path failed before it answered (the template then stands in with no drafts)."""
    if record["source"] in ("llm", "llm_retry"):
        return bool(record["text"].strip())
    return record["source"] == "template" and len(record["drafts"]) == len(record["verdicts"]) == 2
