"""The real entry points, as a user runs them: one shrunk quickstart `python -m noodlenext.train` in a
process of its own, then eval, predict, explain, chat and a resumed run on what it wrote (their commands'
`main` called in this process: the same Hydra entry point, without a second interpreter's start-up)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SYNTHETIC_ARGS, model_answered, run_main, snapshot, user_photos
from wandb_records import config_keys, history_keys, read_records, run_info

import noodlenext.eval
import noodlenext.explain.__main__
import noodlenext.predict
import noodlenext.train

pytestmark = pytest.mark.slow

# The quickstart experiment, shrunk to seconds: 12 synthetic images per class at 32 px, 2 epochs
# (conftest's SYNTHETIC: the session's `synthetic_noodles` are this render).
SHRUNK = [
    *SYNTHETIC_ARGS,
    "data.image_size=32",  # the model follows the data's input size
    "trainer=cpu",
    "data.num_workers=0",
    "data.batch_size=8",
    "llm.max_new_tokens=40",  # the quickstart's SmolLM2 explains the worst test mistakes
]


def run_module(
    module: str, *overrides: str, cwd: Path, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    for name in ("WANDB_API_KEY", "WANDB_SERVICE"):  # its own W&B service, never this process's
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, f"{module} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_noodles: Path) -> Path:
    """One shrunk quickstart run (`python -m noodlenext.train`, SmolLM2 explaining its mistakes) on the
    session's synthetic noodles; returns its run directory."""
    work = tmp_path_factory.mktemp("quickstart")
    run_dir = work / "run"
    run_module(
        "noodlenext.train",
        "experiment=quickstart",
        f"data.root={synthetic_noodles}",
        *SHRUNK,
        "trainer.max_epochs=2",
        "llm.num_explanations=2",  # SmolLM2 explains the two worst mistakes (4 by default)
        "callbacks.mistakes.max_groups=1",  # and writes a paragraph about the largest confusion pair
        f"hydra.run.dir={run_dir}",
        "tags=[e2e]",
        cwd=work,
    )
    return run_dir


@pytest.mark.parametrize("splits", [("train", "test"), ("train", "val", "test")], ids=["no-val", "val"])
def test_the_quickstart_on_a_users_imagefolder_trains_on_it_and_leaves_it_as_it_was(
    tmp_path: Path, splits: tuple[str, ...]
) -> None:
    """Issue 21: `experiment=quickstart data.root=my_noodles` deleted the photos, rendered noodles there."""
    root = user_photos(tmp_path / "my_noodles", splits, per_class=4)
    before = snapshot(root)
    run_dir = tmp_path / "run"
    status, output = run_main(
        noodlenext.train.main, "experiment=quickstart", f"data.root={root}", *SHRUNK, "trainer.max_epochs=1",
        "llm=none", "logger=none", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert status == 0, output[-3000:]
    assert snapshot(root) == before
    log = (run_dir / "quickstart.log").read_text()
    assert log.count("is an ImageFolder of your own photos") == 1, output[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test/acc_per_class"]) == {"ramen", "udon"}  # their classes, not the synthetic three
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_noodles", "run"]  # nothing rendered beside


def test_train_leaves_best_and_last_checkpoints(trained: Path) -> None:
    names = {p.name for p in (trained / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in names and any(n.startswith("epoch_") for n in names)


def test_checkpoint_describes_itself(trained: Path) -> None:
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    meta = ckpt["noodlenext"]
    assert meta["class_names"] == ["spaghetti", "ramen", "udon"]
    assert meta["transform"]["image_size"] == 32 and meta["pretrained"] is False
    assert meta["config"]["model"]["name"].startswith("convnext_atto")
    assert meta["config"]["data"]["batch_size"] == 8  # the composed config, resolved


def test_metrics_json_has_per_class_accuracy(trained: Path, synthetic_noodles: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics["test/acc_per_class"]) == {"spaghetti", "ramen", "udon"}
    on_disk = {
        c: len(list((synthetic_noodles / "test").glob(f"?_{c}/*.jpg")))
        for c in metrics["test/count_per_class"]
    }
    assert metrics["test/count_per_class"] == on_disk
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["pretrained"] is False
    assert (trained / "confusion_matrix.png").stat().st_size > 1000


def test_offline_wandb_run_holds_per_class_metrics_config_and_tags(trained: Path) -> None:
    (run_file,) = (trained / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_records(run_file)
    keys = history_keys(records)
    for split in ("val", "test"):
        assert {f"{split}/acc/{c}" for c in ("spaghetti", "ramen", "udon")} <= keys
    assert {"val/acc", "val/acc_best", "test/f1", "test/loss"} <= keys
    assert any(k.startswith("test/confusion_matrix") for k in keys)
    assert {"model", "data", "trainer", "seed"} <= config_keys(records)
    info = run_info(records)
    assert list(info.tags) == ["e2e"] and info.run_group == "quickstart"


def test_eval_uses_the_checkpoint_not_the_current_defaults(
    trained: Path, tmp_path: Path, synthetic_noodles: Path
) -> None:
    # The current default model is ConvNeXt-Base at 384 px; the checkpoint is ConvNeXt-Atto at 32 px.
    eval_dir = tmp_path / "eval"
    ckpt = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    status, output = run_main(
        noodlenext.eval.main,
        f"ckpt_path={ckpt}",
        "data=synthetic",
        f"data.root={synthetic_noodles}",
        *[o for o in SHRUNK if o.startswith("data.synthetic") or o == "data.num_workers=0"],
        "trainer=cpu",
        f"hydra.run.dir={eval_dir}",
    )
    assert status == 0, output[-3000:]
    trained_metrics = json.loads((trained / "metrics.json").read_text())
    eval_metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert eval_metrics["test/acc"] == pytest.approx(trained_metrics["test/acc"])
    assert eval_metrics["test/acc_per_class"] == pytest.approx(trained_metrics["test/acc_per_class"])


def test_predict_writes_a_csv_for_a_folder(trained: Path, tmp_path: Path, synthetic_noodles: Path) -> None:
    images = synthetic_noodles / "test" / "1_ramen"
    out = tmp_path / "preds.csv"
    ckpt = trained / "checkpoints" / "last.ckpt"
    args = [f"ckpt_path={ckpt}", f"input={images}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    status, output = run_main(noodlenext.predict.main, *args)
    assert status == 0, output[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(list(images.glob("*.jpg")))
    assert list(rows[0]) == ["file", "label", "confidence", "prob_spaghetti", "prob_ramen", "prob_udon"]
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in ("spaghetti", "ramen", "udon")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and float(row["confidence"]) == pytest.approx(
            max(probs)
        )
        assert row["label"] in ("spaghetti", "ramen", "udon")


@pytest.fixture(scope="module")
def resumed(trained: Path, tmp_path_factory: pytest.TempPathFactory, synthetic_noodles: Path) -> Path:
    """The trained run resumed for one more epoch, with an LLM that cannot load (a missing GGUF)."""
    resumed_dir = tmp_path_factory.mktemp("resumed") / "run"
    status, output = run_main(
        noodlenext.train.main,
        "experiment=quickstart",
        f"data.root={synthetic_noodles}",
        *SHRUNK,
        "trainer.max_epochs=3",
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={resumed_dir}",
        "llm=gguf",
        "llm.model=/nowhere/gemma-3-4b-it.gguf",
        "callbacks.mistakes=null",  # the explanations are what this run checks
    )
    assert status == 0, output[-3000:]
    return resumed_dir


def test_resume_from_last_checkpoint_continues_training(trained: Path, resumed: Path) -> None:
    first = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    resumed_dir = resumed
    second = torch.load(resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    steps_per_epoch = first["global_step"] // 2
    assert first["epoch"] == 1 and second["epoch"] == 2  # one more epoch, not three
    assert second["global_step"] == first["global_step"] + steps_per_epoch


def test_heatmap_gallery_writes_grids_facts_and_a_wandb_table(trained: Path) -> None:
    gallery = trained / "heatmaps" / "test"
    report = json.loads((gallery / "heatmaps.json").read_text())
    rows = report["samples"]
    assert set(report["faithfulness"]) == {"scorecam", "gradcam"}
    assert 0.0 <= report["faithfulness"]["scorecam"]["deletion"] <= 1.0
    assert rows and {r["kind"] for r in rows} <= {"misclassified", "correct"}
    wrong = [r for r in rows if r["kind"] == "misclassified"]
    assert [r["loss"] for r in wrong] == sorted((r["loss"] for r in wrong), reverse=True)  # worst first
    for r in rows:
        assert (r["kind"] == "misclassified") == (r["true"] != r["predicted"])
        assert set(r["heatmaps"]) == {"scorecam", "gradcam"}
        assert r["heatmaps"]["scorecam"]["peak_region"] and r["heatmaps"]["gradcam"]["description"]
        assert Path(r["file"]).is_file()
    for kind in {r["kind"] for r in rows}:
        assert (gallery / f"{kind}.png").stat().st_size > 1000
    (run_file,) = (trained / "wandb").glob("offline-run-*/run-*.wandb")
    keys = history_keys(read_records(run_file))
    assert any(k.startswith("test/heatmaps") for k in keys)
    assert {"test/faithfulness/scorecam/deletion", "test/faithfulness/gradcam/insertion"} <= keys
    assert {
        "test/faithfulness/scorecam/random_deletion",
        "test/faithfulness/scorecam/informative_share",
    } <= keys


def test_every_gallery_sample_carries_the_evidence_the_model_produced(trained: Path) -> None:
    from noodlenext.explain.evidence import Evidence

    report = json.loads((trained / "heatmaps" / "test" / "heatmaps.json").read_text())
    for row in report["samples"]:
        evidence = Evidence.from_dict(row["evidence"])
        assert evidence.predicted == row["predicted"] and evidence.true_label == row["true"]
        expected = row["true"] if row["kind"] == "misclassified" else None
        assert expected is None or evidence.contrast_class == expected  # wrong: explained against the truth
        assert evidence.contrast_class != evidence.predicted
        assert evidence.counterfactual is not None and evidence.appearance is not None
        assert set(evidence.trust) == {"scorecam", "gradcam"} and evidence.agreement is not None
        assert len(evidence.neighbours) == 5 and all(Path(n.file).is_file() for n in evidence.neighbours)
        assert "/train/" in evidence.neighbours[0].file  # from the training set, not the test photo itself
        assert row["evidence_lines"] == evidence.lines() and row["evidence_lines"][0].startswith("1. ")
    assert (trained / "heatmaps" / "train_features.npz").is_file()


def test_explain_cli_writes_overlays_and_facts_for_a_folder(
    trained: Path, tmp_path: Path, synthetic_noodles: Path
) -> None:
    images = synthetic_noodles / "test"
    out = tmp_path / "explained"
    ckpt = trained / "checkpoints" / "last.ckpt"
    status, output = run_main(noodlenext.explain.__main__.main, f"ckpt_path={ckpt}", f"input={images}",
                              f"output={out}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert status == 0, output[-3000:]
    facts = json.loads((out / "facts.json").read_text())
    n = len(list(images.rglob("*.jpg")))
    assert (
        len(facts) == n
        and len(list(out.rglob("*.jpg_scorecam.png"))) == n  # out/<class>/<name>.jpg_<method>.png
        and len(list(out.rglob("*.jpg_gradcam.png"))) == n
    )
    assert {"peak_region", "region_shares", "area_above_half", "centroid_xy", "concentration"} <= set(
        facts[0]["heatmaps"]["scorecam"]
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("explain.target_layer=stages.9.nope", "explain.target_layer"),
        ("ckpt_path=/nonexistent/model.ckpt", "ckpt_path=/nonexistent/model.ckpt"),
        ("input=/nonexistent/photo.jpg", "input=/nonexistent/photo.jpg"),
    ],
)
def test_explain_cli_errors_name_the_problem(
    trained: Path, tmp_path: Path, synthetic_noodles: Path, override: str, message: str
) -> None:
    photo = next((synthetic_noodles / "test").rglob("*.jpg"))
    args = {
        "ckpt_path": str(trained / "checkpoints" / "last.ckpt"),
        "input": str(photo),
        "method": "scorecam",
    }
    key, value = override.split("=", 1)
    overrides = [f"{k}={v}" for k, v in {**args, key: value}.items() if k != key] + [override]
    status, output = run_main(noodlenext.explain.__main__.main, *overrides, f"hydra.run.dir={tmp_path}")
    assert status != 0 and message in output


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_llm_explains_the_worst_test_mistakes(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    wrong = round(
        sum(n * (1 - metrics["test/acc_per_class"][c]) for c, n in metrics["test/count_per_class"].items())
    )
    assert wrong > 0, "the shrunk run made no test mistake to explain"
    records = read_jsonl(trained / "explanations.jsonl")
    assert len(records) == min(2, wrong)  # llm.num_explanations
    assert [r["loss"] for r in records] == sorted((r["loss"] for r in records), reverse=True)
    from noodlenext.explain.evidence import Evidence
    from noodlenext.llm.grounding import check_explanation

    for r in records:
        assert r["error"] is None and r["llm"] == "smollm2" and len(r["explanation"].split()) >= 3
        assert r["predicted"] != r["true_label"]
        question = r["messages"][1]["content"]
        assert all(line in question for line in r["evidence_lines"])  # the numbered facts, as sent
        assert r["evidence_lines"][0].startswith("1. The classifier predicted")
        assert all(Path(p).is_file() for p in r["images"])
        # No unchecked text reaches a reader: what is shown passed the gate, and says whose words it is.
        evidence = Evidence.from_dict(r["evidence"])
        assert evidence.predicted == r["predicted"] and evidence.contrast_class == r["true_label"]
        assert r["source"] in ("llm", "llm_retry", "template")
        assert check_explanation(r["explanation"], evidence).passed
        verdicts = r["grounding"]["verdicts"]
        assert len(verdicts) == {"llm": 1, "llm_retry": 2, "template": 2}[r["source"]]
        assert all(not v["passed"] and v["reasons"] for v in verdicts[:-1])
    (run_file,) = (trained / "wandb").glob("offline-run-*/run-*.wandb")
    assert any(k.startswith("test/llm_explanations") for k in history_keys(read_records(run_file)))


def test_an_llm_that_fails_keeps_the_run_and_says_why(resumed: Path) -> None:
    assert (resumed / "metrics.json").is_file() and (resumed / "checkpoints" / "last.ckpt").is_file()
    records = read_jsonl(resumed / "explanations.jsonl")
    assert records and all(
        r["error"]["step"] == "llm" and "/nowhere/gemma-3-4b-it.gguf" in r["error"]["message"]
        for r in records
    )
    # The reader still gets an explanation, written from the evidence and marked as such.
    assert all(
        r["source"] == "template" and r["explanation"] and not r["grounding"]["verdicts"] for r in records
    )
    (run_file,) = (resumed / "wandb").glob("offline-run-*/run-*.wandb")
    assert any(k.startswith("test/llm_explanations") for k in history_keys(read_records(run_file)))


def udon_photo(synthetic_noodles: Path) -> Path:
    return sorted((synthetic_noodles / "test" / "2_udon").glob("*.jpg"))[0]


def chat_in_process(compose_cfg, *overrides: str, stdin: str = "") -> tuple[str, Path]:  # noqa: ANN001
    """`python -m noodlenext.chat overrides...` with `stdin`, in this process: (what it printed, its run
    directory). chat() prints to the `out` it is given (its default is the stdout of its import)."""
    from noodlenext.chat import chat

    cfg = compose_cfg("chat", list(overrides))
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdin", io.StringIO(stdin))
        chat(cfg, out=printed)
    return printed.getvalue(), Path(cfg.paths.output_dir)


def test_chat_explains_a_photo_then_answers_scripted_questions(
    trained: Path, synthetic_noodles: Path, compose_cfg
) -> None:
    from noodlenext.explain.evidence import Evidence
    from noodlenext.llm.grounding import check_explanation

    ckpt = trained / "checkpoints" / "last.ckpt"
    stdout, out = chat_in_process(
        compose_cfg,
        f"ckpt_path={ckpt}",
        f"image={udon_photo(synthetic_noodles)}",
        "chat.questions=[Why not spaghetti?,What would change your mind?,Thanks]",
        "llm.max_new_tokens=32",
    )
    assert stdout.count("llm> ") == 4 and "you> Why not spaghetti?" in stdout
    assert "ScoreCAM:" in stdout and f"transcript: {out / 'chat.json'}" in stdout
    saved = json.loads((out / "chat.json").read_text())
    roles = [m["role"] for m in saved["transcript"]]
    assert roles == ["system"] + ["user", "assistant"] * 4
    assert saved["transcript"][3]["content"].startswith("Why not spaghetti?")
    evidence = Evidence.from_dict(saved["metadata"]["evidence"])
    assert evidence.true_label == "udon"  # from the image's class folder
    assert "evidence:\n  1. The classifier predicted" in stdout
    # The follow-ups were answered by running the model: the router picked the test, its result was
    # printed beside the answer and joined the evidence; "Thanks" needed no test.
    assert "test> why_not(other='spaghetti'), picked by the router:" in stdout
    assert "test> change_mind(), picked by the router:" in stdout
    assert [f.probe for f in evidence.findings] == ["why_not", "change_mind"]
    assert evidence.findings[0].lines[0].startswith("Asked why not spaghetti")
    assert stdout.count("test> ") == 2 and (out / "test_02_change_mind.png").is_file()
    # Every answer was checked against the evidence before it was printed, and says so.
    assert stdout.count("(checked against the evidence") + stdout.count("(from the evidence template") == 4
    # Each answer was the model's: it passed the gate, or both its drafts were rejected (never a model
    # that failed before answering, which would leave the template with no drafts).
    records = saved["metadata"]["grounding"]
    assert len(records) == 4 and all(model_answered(r) for r in records), records
    for answer in [m["content"] for m in saved["transcript"] if m["role"] == "assistant"][1:]:
        assert check_explanation(answer, evidence, followup=True).passed, answer
    assert (out / "photo.png").is_file() and (out / "scorecam.png").is_file()


def test_chat_reads_stdin_until_exit_and_resumes_a_saved_chat(
    trained: Path, tmp_path: Path, synthetic_noodles: Path, compose_cfg
) -> None:
    """The chat as a person types it: `python -m noodlenext.chat` reading a real pipe, then resumed."""
    ckpt = trained / "checkpoints" / "last.ckpt"
    first = tmp_path / "first"
    common = [f"ckpt_path={ckpt}", f"image={udon_photo(synthetic_noodles)}", "llm.max_new_tokens=24"]
    run_module(
        "noodlenext.chat",
        *common,
        f"hydra.run.dir={first}",
        cwd=tmp_path,
        stdin="Is it udon?\nexit\nnot asked\n",
    )
    saved = json.loads((first / "chat.json").read_text())
    assert [m["content"] for m in saved["transcript"] if m["role"] == "user"][1:] == ["Is it udon?"]
    _, second = chat_in_process(
        compose_cfg, *common, f"chat.resume={first / 'chat.json'}", stdin="And ramen?\n"
    )
    resumed = json.loads((second / "chat.json").read_text())
    assert resumed["transcript"][: len(saved["transcript"])] == saved["transcript"]
    assert (
        resumed["transcript"][-2]["content"] == "And ramen?"
        and resumed["transcript"][-1]["role"] == "assistant"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("image=/nonexistent/bowl.jpg", "image=/nonexistent/bowl.jpg: no such file"),
        ("llm=none", "llm=none: the chat needs a language model"),
        ("true_label=pho", "true_label='pho' is not one of the checkpoint's classes"),
        ("llm.model=/nowhere/model.gguf", "/nowhere/model.gguf"),
    ],
)
def test_chat_errors_name_the_problem(
    trained: Path, tmp_path: Path, synthetic_noodles: Path, override: str, message: str
) -> None:
    import noodlenext.chat

    args = {"ckpt_path": trained / "checkpoints" / "last.ckpt", "image": udon_photo(synthetic_noodles)}
    key = override.split("=", 1)[0]
    overrides = [f"{k}={v}" for k, v in args.items() if k != key] + [override]
    status, output = run_main(noodlenext.chat.main, *overrides, f"hydra.run.dir={tmp_path}", stdin="")
    assert status != 0 and message in output
