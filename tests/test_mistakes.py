"""What the mistakes have in common: groups by confusion pair, what their evidence shares, a gated paragraph.

The toy classifier (tests/toy_models.py) says ramen from the top-left quadrant's energy and udon from the
bottom-right's, so the evidence of its mistakes is known: udon photos striped in the top left are taken
for ramen, with heat in the upper left, and hiding the stripes turns them into udon (a fainter stripe in
the bottom right).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from toy_models import NAMES, QUADRANTS, SIZE, QuadrantModel

from noodlenext.callbacks.mistake_groups import MistakeGroup, confusion_groups, examine, save_images
from noodlenext.callbacks.mistake_paragraphs import check_paragraph, explain_groups
from noodlenext.callbacks.mistake_report import report_markdown
from noodlenext.callbacks.mistakes import MistakeGroups
from noodlenext.callbacks.samples import Sample
from noodlenext.data.datamodule import NoodleImages
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.evidence import CAUSE_KINDS, Evidence
from noodlenext.explain.facts import heatmap_facts
from noodlenext.explain.groups import group_evidence, summary_claim
from noodlenext.explain.neighbours import FeatureIndex
from noodlenext.explain.templates import group_template as template
from noodlenext.llm.grounding import check_explanation
from noodlenext.llm.prompt import PromptSettings

MEAN = STD = (0.5, 0.5, 0.5)  # mid-grey is 0: only the stripes have energy
# Stripe colour pairs that average to mid-grey: hidden stripes (the mean colour) have no energy left.
YELLOW_BLUE = ((230, 200, 40), (26, 56, 216))
RED_CYAN = ((230, 30, 30), (26, 226, 226))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
PROMPT = PromptSettings.default()
WORDS = PROMPT.max_words


def group_template(evidence: Evidence) -> str:
    return template(evidence, WORDS)


def summary(group: MistakeGroup, kind: str) -> dict:
    return summary_claim(group.evidence, kind).fields


def striped(
    path: Path, top_left: float, bottom_right: float, colours=YELLOW_BLUE, seed: int = 0
) -> tuple[Path, int]:
    """A grey photo with 1-px stripes in the top-left and bottom-right quadrants at the given contrasts."""
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal(128, 2, (SIZE, SIZE, 3)), 0, 255)
    h = SIZE // 2
    for (ys, xs), contrast in (
        ((slice(0, h), slice(0, h)), top_left),
        ((slice(h, None), slice(h, None)), bottom_right),
    ):
        patch = np.zeros((h, h, 3))
        patch[0::2], patch[1::2] = colours
        a[ys, xs] = 128 + contrast * (patch - 128)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.uint8(np.clip(a, 0, 255))).save(path)
    return path, NAMES.index(path.parent.name)


def toy_run(root: Path) -> tuple[QuadrantModel, NoodleImages, list[Sample], FeatureIndex]:
    """Test photos: 4 udon photos taken for ramen (3 yellow/blue, 1 red/cyan stripes top left, a faint
    stripe bottom right), 2 ramen photos taken for udon (stripes bottom right), 2 ramen photos right.
    Training photos: ramen striped top left, udon bottom right. Samples as the test loop collects them."""
    test = [striped(root / "test" / "udon" / f"{i}.png", 1.0, 0.5, seed=i) for i in range(3)]
    test.append(striped(root / "test" / "udon" / "3.png", 1.0, 0.5, RED_CYAN, seed=3))
    test += [striped(root / "test" / "ramen" / f"w{i}.png", 0.0, 1.0, seed=10 + i) for i in range(2)]
    test += [striped(root / "test" / "ramen" / f"r{i}.png", 1.0, 0.0, seed=20 + i) for i in range(2)]
    train = [striped(root / "train" / "ramen" / f"{i}.png", 1.0, 0.0, seed=30 + i) for i in range(3)]
    train += [striped(root / "train" / "udon" / f"{i}.png", 0.0, 1.0, seed=40 + i) for i in range(3)]
    transform = eval_transform(SIZE, MEAN, STD)
    dataset = NoodleImages(test, transform)
    model = QuadrantModel().eval()
    with torch.no_grad():
        logits = model(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    targets = torch.tensor([label for _, label in test])
    losses = F.cross_entropy(logits, targets, reduction="none")
    samples = [
        Sample(i, int(targets[i]), int(logits[i].argmax()), float(losses[i]), logits[i].softmax(0).tolist())
        for i in range(len(test))
    ]
    index = FeatureIndex.build(model, NoodleImages(train, transform), class_names=NAMES)
    return model, dataset, samples, index


@pytest.fixture(scope="module")
def examined(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[MistakeGroup], list[Sample], Path]:
    root = tmp_path_factory.mktemp("toy")
    model, dataset, samples, index = toy_run(root / "data")
    groups = confusion_groups(samples, NAMES, max_groups=6, max_per_group=3)
    examine(groups, dataset, model, NAMES, settings=QUADRANTS, index=index, num_neighbours=3)
    return groups, samples, root


def test_mistakes_are_grouped_by_confusion_pair_largest_first(examined) -> None:
    groups, samples, _ = examined
    assert [(g.true, g.predicted, g.count) for g in groups] == [("udon", "ramen", 4), ("ramen", "udon", 2)]
    udon = groups[0]
    assert len(udon.photos) == 3  # max_per_group: the 3 with the largest loss
    wrong = sorted((s.loss for s in samples if s.target == 1 and s.pred == 0), reverse=True)
    assert [p.sample.loss for p in udon.photos] == wrong[:3]
    assert udon.title == "udon taken for ramen: 4 photos"
    assert all(p.error is None and p.evidence.verdict == "wrong" for g in groups for p in g.photos)


def test_what_a_groups_evidence_shares_is_counted(examined) -> None:
    groups, _, _ = examined
    udon, ramen = groups
    size = summary(udon, "group_size")
    assert size["examined"] == 3 and size["count"] == 4 and size["method"] == "gradcam"
    # The toy decides ramen from the top-left quadrant: every mistake's heat is in the upper left.
    hot = summary(udon, "group_hot")
    assert hot["shared"][0] == ["upper left", 3] and udon.shared_regions[0] == "upper left"
    assert ramen.shared_regions[0] == "lower right" and "lower right" not in hot["all"]
    # Hiding the top-left stripes leaves the faint bottom-right ones: every photo becomes udon.
    hiding = summary(udon, "group_hiding")
    assert (hiding["c"], hiding["changed"], hiding["to"], hiding["dropped"]) == (3, 3, [["udon", 3]], 3)
    assert hiding["after"] < hiding["before"] - 0.05 and summary(udon, "group_keeping")["kept"] == 3
    # The nearest training photos are the top-left-striped ramen ones: they agree with the mistake.
    near = summary(udon, "group_neighbours")
    assert (near["j"], near["most"], near["agree"], near["total"]) == (3, [["ramen", 3]], 3, 9)
    assert near["shares"] == [["ramen", 1.0]] and summary(udon, "group_trust")["j"] == 3
    # The colours are counted per photo: yellow and blue in each yellow/blue one, red in the red/cyan one.
    colours = dict(summary(udon, "group_look")["colours"])
    striped_yellow = sum("/3.png" not in p.file for p in udon.photos)
    assert colours["yellow"] == colours["blue"] == striped_yellow
    assert colours.get("red", 0) == 3 - striped_yellow
    # The claims state the same numbers the words do: 3 of 3 changed, all to udon.
    claim = summary_claim(udon.evidence, "group_hiding")
    assert {(c.n, c.of, c.label) for c in claim.counts} >= {(3, 3, ""), (3, 3, "udon")}


def test_a_group_reads_as_numbered_lines_with_its_summary_last(examined) -> None:
    udon = examined[0][0]
    lines = udon.evidence.lines()
    assert lines[0] == f"1. The classifier predicted ramen with {udon.evidence.confidence:.0%} confidence; " \
        "the true label is udon (wrong)."  # fmt: skip
    # What changing the photos did leads, right after the prediction: hiding one part at a time, then the
    # whole-photo changes; the maps and the summary follow.
    o = len(udon.evidence.lead)
    lead = udon.evidence.lead
    assert o >= 2 and all(c.kind in CAUSE_KINDS for c in lead)
    assert any(line.startswith(f"{n}. Hiding one part at a time, the part that matters most is the ")
               for n, line in enumerate(lines[1 : 1 + o], 2))  # fmt: skip
    # The change that turns the most photos back to udon comes first.
    back = [sum(c.n for c in claim.counts if c.label == "udon" and c.what in ("becomes", "turned back"))
            for claim in lead]  # fmt: skip
    assert back[0] > 0
    # Each cause is also tried on the photos of ramen it got right (the group's references).
    assert examined[0][0].references and all(s.pred == s.target == 0 for s in examined[0][0].references)
    assert all("reference" in c.fields for c in lead if c.kind in ("group_occlusion", "group_whole_photo"))
    assert lines[1 + o].startswith(f"{2 + o}. GradCAM: ")
    assert lines[2 + o].startswith(f"{3 + o}. Contrastive map (ramen over udon)")
    assert (
        "3 of the 4 udon photos (those with the largest loss) that the classifier took for ramen"
        in lines[3 + o]
    )
    assert f"line {2 + o} their mean GradCAM map, line {3 + o} their mean contrastive map" in lines[3 + o]
    assert lines[4 + o].endswith("upper left in all 3, upper center in all 3, middle left in all 3.")
    assert "changes the prediction in all 3 photos (it becomes udon in all 3)" in lines[6 + o]
    assert udon.evidence.probabilities["ramen"] == pytest.approx(
        np.mean([p.evidence.probabilities["ramen"] for p in udon.photos])
    )


def test_the_template_paragraph_passes_the_gate_and_says_what_they_share(examined) -> None:
    for group in examined[0]:
        text = group_template(group.evidence)
        assert check_explanation(text, group.evidence).passed, text
        assert f"took {group.count} {group.true} photos for {group.predicted}" in text
    udon = examined[0][0]
    text = group_template(udon.evidence)
    assert "upper left" in text and "drops ramen" in text
    # What changing the photos did comes right after the size, when a change undoes the mistakes more
    # often than it turns the ramen photos it got right: here a quarter of the resolution.
    lead = udon.evidence.lead[0]
    second = text.split("]. ", 1)[1]
    assert lead.kind == "group_whole_photo" and second.startswith(
        "At a quarter of the resolution, all 3 become udon"
    )


def _variants(e: Evidence) -> dict[str, Evidence]:
    """The photo's evidence, and versions of it that lack or contradict each piece."""
    empty = heatmap_facts(np.zeros((SIZE, SIZE)))
    cf = e.counterfactual
    return {
        "as is": e,
        "no neighbours": replace(e, neighbours=[]),
        "true neighbours": replace(e, neighbours=[replace(n, label=e.true_label) for n in e.neighbours]),
        "untrusted": replace(
            e, trust={m: replace(t, deletion=1.0, insertion=0.0) for m, t in e.trust.items()}
        ),
        "no effect": replace(e, counterfactual=replace(cf, hidden=cf.original, drop=0.0)),
        "no hot region": replace(e, counterfactual=replace(cf, hot_area=0.0), appearance=None),
        "empty maps": replace(e, facts={m: empty for m in e.facts}, contrastive=empty),
        "nothing else": replace(e, counterfactual=None, appearance=None, neighbours=[], trust={}),
    }


def test_the_template_passes_the_gate_whatever_the_group_holds(examined) -> None:
    udon = examined[0][0]
    photos = [_variants(p.evidence) for p in udon.photos]
    cams = [p.cam for p in udon.photos]
    checked = 0
    for k in (1, 2, 3):
        mixes = itertools.combinations_with_replacement(list(photos[0]), k)
        for mix in (m for m in mixes if k < 3 or m[0] == "as is"):  # each pair of variants, and with a third
            evidences = [photos[i][name] for i, name in enumerate(mix)]
            maps = [
                np.zeros_like(c) if name == "empty maps" else c for c, name in zip(cams[:k], mix, strict=True)
            ]
            for count in (k, k + 2):
                group = group_evidence(evidences, maps, [p.contrastive for p in udon.photos[:k]], count=count)
                text = group_template(group)
                verdict = check_paragraph(text, group, WORDS)  # the gate, and not a list or a copy
                assert verdict.passed, (mix, count, text, verdict.reasons)
                assert all(line.endswith(".") for line in group.lines())
                checked += 1
    assert checked == 2 * (8 + 36 + 36)


def test_a_small_group_reads_naturally(examined) -> None:
    ramen = examined[0][1]  # both ramen photos taken for udon
    lines = "\n".join(ramen.evidence.lines())
    assert "about both ramen photos that the classifier took for udon" in lines
    assert "in both" in lines and "all 2" not in lines and "1 of 1" not in lines
    single = group_evidence([ramen.photos[0].evidence], [ramen.photos[0].cam], count=1)
    text = group_template(single)
    assert text.startswith("The classifier took this ramen photo for udon") and "Its heat is in the" in text
    assert "1 of 1" not in "\n".join(single.lines()) and check_explanation(text, single).passed


def test_the_gate_holds_a_paragraph_about_a_group_to_its_evidence(examined) -> None:
    udon = examined[0][0].evidence
    o = len(udon.lead)
    good = (
        f"The classifier took these udon photos for ramen because their heat sits in the upper left "
        f"[{2 + o}, {5 + o}]. Hiding that region turns them into udon [{7 + o}]."
    )
    assert check_explanation(good, udon).passed
    wrong_place = good.replace("upper left", "lower right")
    assert "lower right" in " ".join(check_explanation(wrong_place, udon).reasons)
    invented = good.replace(f"[{7 + o}]", f"in 93% of them [{7 + o}]")
    assert "93%" in " ".join(check_explanation(invented, udon).reasons)


def test_a_paragraph_that_lists_or_copies_the_facts_is_no_summary(examined) -> None:
    udon = examined[0][0].evidence
    lines = udon.lines()
    o = len(udon.lead)
    # What SmolLM2 wrote for a group, which the gate alone lets by: the numbered facts back, as a list.
    echo = f"{lines[0]}\n{lines[1 + o].split(' in the')[0]} in the upper left, as for most photos."
    assert check_explanation(echo, udon).passed
    assert "is a list" in " ".join(check_paragraph(echo, udon, WORDS).reasons)
    copied = "Udon was taken for ramen: " + lines[6 + o].split(". ", 1)[1]
    assert f"copies fact [{7 + o}] word for word" in " ".join(check_paragraph(copied, udon, WORDS).reasons)
    summary_text = (
        f"The classifier took these udon photos for ramen, with their heat in the upper left "
        f"[{2 + o}, {5 + o}]. Hiding them turns every one into udon [{7 + o}]."
    )
    assert check_paragraph(summary_text, udon, WORDS).passed


def test_without_a_language_model_each_group_gets_the_marked_template(examined, tmp_path: Path) -> None:
    groups, samples, root = examined
    explain_groups(groups, OmegaConf.create({"name": "none", "backend": None}), PROMPT)
    for group in groups:
        assert group.paragraph.source == "template" and not group.paragraph.verdicts
        assert group.paragraph.text == group_template(group.evidence)
        assert group.paragraph.for_reader().endswith(
            "(from the evidence template: the language model gave no answer)"
        )


def test_a_model_whose_answers_fail_the_gate_is_replaced_by_the_template(examined, tmp_path: Path) -> None:
    from tiny_llms import save_tiny_llama

    model = save_tiny_llama(tmp_path / "llama")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    groups = examined[0]
    llm = OmegaConf.create(
        {"name": "tiny", "max_new_tokens": 8,
         "backend": {"_target_": "noodlenext.llm.transformers_backend.TransformersBackend",
                     "model": str(model), "device": "cpu"}}
    )  # fmt: skip
    explain_groups(groups, llm, PROMPT)
    for group in groups:
        result = group.paragraph
        assert not group.errors and result.source == "template"  # a random model's words never pass
        assert result.text == group_template(group.evidence)
        assert len(result.verdicts) == 2 and not any(v.passed for v in result.verdicts)
        assert "the model's answer failed the check" in result.for_reader()
        assert f"these {group.count} {group.true} photos" in group.messages[1]["content"]  # the question
        assert all(line in group.messages[1]["content"] for line in group.evidence.lines())


def test_the_report_has_a_section_per_group_with_lines_paragraph_and_linked_thumbnails(
    examined, tmp_path: Path
) -> None:
    groups, samples, _ = examined
    explain_groups(groups, None, PROMPT)
    run_dir = tmp_path / "run"
    save_images(groups, run_dir / "mistakes")
    md = report_markdown(groups, run_dir, len(samples), 6, 2, None, "gradcam")
    assert md.startswith("# What the mistakes have in common\n\n6 of 8 test photos are misclassified")
    sections = md.split("\n## ")[1:]
    assert [s.split("\n", 1)[0] for s in sections] == [
        "udon taken for ramen: 4 photos", "ramen taken for udon: 2 photos",
    ]  # fmt: skip
    for section, group in zip(sections, groups, strict=True):
        assert all(f"\n{line}\n" in section for line in group.evidence.lines())
        assert group.paragraph.for_reader() in section
        links = [part.split(")", 1)[0] for part in section.split("](")[1:]]
        assert len(links) == 1 + 2 * len(group.photos)  # the mean map, then each thumbnail and photo
        assert all(not Path(link).is_absolute() and (run_dir / link).is_file() for link in links)
        with Image.open(run_dir / links[1]) as thumb:
            assert thumb.size == (192, 96)  # the photo | its map


def test_the_callback_is_on_by_default_and_follows_the_run_config(compose_cfg) -> None:
    from noodlenext.runs.instantiate import instantiate_callbacks

    cfg = compose_cfg("train", ["llm=none", "callbacks.mistakes.max_groups=2"])
    (callback,) = [c for c in instantiate_callbacks(cfg) if isinstance(c, MistakeGroups)]
    assert callback.methods == ("gradcam",) and callback.max_groups == 2 and callback.max_per_group == 8
    assert str(callback.output_dir) == cfg.paths.output_dir and callback.llm.name == "none"
    assert "{count}" in callback.prompt.group_question and callback.prompt.max_words == 90
    assert compose_cfg("train", ["experiment=crossval"]).callbacks.mistakes is None  # no report per fold


def test_the_callback_refuses_a_negative_cap() -> None:
    with pytest.raises(ValueError, match=r"callbacks.mistakes.max_groups=-1"):
        MistakeGroups(output_dir="x", max_groups=-1)


# ---------------------------------------------------------------------------- a real training run
@pytest.mark.slow
def test_a_training_run_writes_the_groups_to_markdown_json_and_wandb_and_names_a_damaged_photo(
    tmp_path: Path, compose_cfg
) -> None:
    from test_llm_explanations import DamageTheWorstMistake  # noqa: F401 - the callback below
    from test_train_e2e import SHRUNK
    from wandb_records import history_keys, read_records

    from noodlenext.train import train

    report = tmp_path / "damaged.txt"
    cfg = compose_cfg(
        "train",
        [
            "experiment=quickstart", f"data.root={tmp_path / 'synthetic'}", *SHRUNK, "trainer.max_epochs=1",
            "llm=none", "callbacks.heatmap_gallery=null", "callbacks.mistakes.max_per_group=3",
            "+callbacks.damage._target_=test_llm_explanations.DamageTheWorstMistake",
            f"+callbacks.damage.report={report}",
        ],
    )  # fmt: skip
    train(cfg)

    run_dir = Path(cfg.paths.output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert report.is_file(), "the run made no test mistake to damage"
    saved = json.loads((run_dir / "mistakes.json").read_text())
    # The groups are the confusion matrix's off-diagonal cells, largest first.
    matrix = metrics["confusion_matrix"]["rows_true_cols_pred"]
    names = metrics["confusion_matrix"]["classes"]
    cells = sorted(
        (
            (int(n), names[i], names[j])
            for i, row in enumerate(matrix)
            for j, n in enumerate(row)
            if i != j and n
        ),
        key=lambda c: -c[0],
    )
    assert sorted((g["count"], g["true"], g["predicted"]) for g in saved["groups"]) == sorted(cells[:6])
    assert saved["mistakes"] == sum(c[0] for c in cells) and saved["llm"] == "none"
    md = (run_dir / "mistakes.md").read_text()
    damaged = report.read_text()
    errors = [e for g in saved["groups"] for e in g["errors"]]
    assert [e["step"] for e in errors] == ["load_image"] and Path(damaged).name in errors[0]["message"]
    assert "> **Error** — load_image failed: " in md and Path(damaged).name in md
    for group in saved["groups"]:
        heading = f"## {group['true']} taken for {group['predicted']}: {group['count']} photo"
        assert heading in md
        if group["evidence"] is not None:
            evidence = Evidence.from_dict(group["evidence"])
            assert group["source"] == "template" and check_explanation(group["paragraph"], evidence).passed
            assert all(line in md for line in group["evidence_lines"])
            examined = group["summary"]["group_size"]["examined"]
            assert examined == sum(p["error"] is None for p in group["photos"])
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    keys = history_keys(read_records(run_file))  # a table's and a page's fields: test/mistakes/_type, ...
    assert {"test/mistakes/_type", "test/mistakes_report/_type"} <= keys
    (table,) = (run_dir / "wandb").glob("offline-run-*/files/media/table/test/mistakes_*.table.json")
    logged = json.loads(table.read_text())
    assert [row[0] for row in logged["data"]] == [f"{g['true']} → {g['predicted']}" for g in saved["groups"]]
    assert any("load_image failed" in row[-1] for row in logged["data"])
