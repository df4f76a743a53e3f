"""Evidence records from real runs, for the grounding gate's benchmark (bench/gate.py).

    .venv/bin/python bench/gate_records.py --run outputs/quickstart/<run> --source synthetic \
        --mistakes 10 --hits 4 --groups 3 --out bench/gate_data/records_synthetic.json

Loads the run's best checkpoint (with its nearest-training-photo index, `heatmaps/train_features.npz`),
classifies every test photo of the run's data.root once, then gathers the full Evidence (ScoreCAM and
GradCAM, the contrastive map, the counterfactuals, the appearance, the neighbours, the trust check) of the
`--mistakes` mistakes with the largest loss, the `--hits` surest hits, and, for the `--groups` largest
confusion pairs, the group Evidence of up to `--per-group` of their photos (`explain.groups`). Each record
holds the Evidence (JSON), its numbered lines and the question the explain prompt asks about it: what an
answer writer is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from noodlenext.data.images import class_folders, display_name, list_files, load_rgb
from noodlenext.explain.groups import group_evidence
from noodlenext.explain.photo import PhotoExplainer
from noodlenext.llm.prompt import PromptSettings, evidence_messages, group_messages


def best_checkpoint(run: Path) -> Path:
    found = sorted((run / "checkpoints").glob("epoch_*.ckpt"))
    if not found:
        raise SystemExit(f"{run}/checkpoints has no epoch_*.ckpt")
    return found[-1]


def test_photos(root: Path) -> list[tuple[Path, str]]:
    out = []
    for folder in class_folders(root / "test"):
        images, _ = list_files(folder)
        out += [(p, display_name(folder.name)) for p in images]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="default: the run's data.root")
    p.add_argument("--source", required=True, help="a name for where the photos come from")
    p.add_argument("--mistakes", type=int, default=10)
    p.add_argument("--hits", type=int, default=4)
    p.add_argument("--groups", type=int, default=3)
    p.add_argument("--per-group", type=int, default=5)
    p.add_argument(
        "--skip", type=int, default=0, help="leave out the first N mistakes and hits (a held-out set)"
    )
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(2)
    cfg = OmegaConf.load(a.run / ".hydra" / "config.yaml")
    root = a.data or Path(str(cfg.data.root))
    explainer = PhotoExplainer(best_checkpoint(a.run), "cpu", "both")
    names = explainer.class_names
    model = explainer.model
    photos = [(path, label) for path, label in test_photos(root) if label in names]
    scored = []
    with torch.no_grad():
        for start in range(0, len(photos), 64):
            chunk = photos[start : start + 64]
            x = torch.stack([explainer.transform(load_rgb(path, explainer.image_size)) for path, _ in chunk])
            logits = model(x)
            targets = torch.tensor([names.index(label) for _, label in chunk])
            losses = F.cross_entropy(logits, targets, reduction="none")
            probs = model.probabilities(logits)
            for (path, label), loss, prob in zip(chunk, losses.tolist(), probs, strict=True):
                scored.append((path, label, names[int(prob.argmax())], loss, float(prob.max())))
    wrong = sorted([s for s in scored if s[1] != s[2]], key=lambda s: -s[3])
    right = sorted([s for s in scored if s[1] == s[2]], key=lambda s: -s[4])
    print(f"{len(scored)} test photos, {len(wrong)} mistakes", file=sys.stderr)
    prompt = PromptSettings.default()
    analyses = {}

    def analyse(path: Path, label: str):  # noqa: ANN202
        if path not in analyses:
            analyses[path] = explainer(load_rgb(path), true_label=label, file=str(path))
        return analyses[path]

    records = []
    chosen_sets = (("mistake", wrong[a.skip : a.skip + a.mistakes]), ("hit", right[a.skip : a.skip + a.hits]))
    for kind, chosen in chosen_sets:
        for i, (path, label, *_rest) in enumerate(chosen, a.skip + 1):
            evidence = analyse(path, label).evidence
            user = evidence_messages(evidence, prompt, False)[1]["content"]
            records.append(
                {
                    "id": f"{a.source}-{kind}-{i:02d}",
                    "source": a.source,
                    "kind": kind,
                    "evidence": evidence.to_dict(),
                    "lines": evidence.lines(),
                    "question": user,
                }
            )
            print(records[-1]["id"], path.name, file=sys.stderr)
    pairs = Counter((s[1], s[2]) for s in wrong)
    largest = pairs.most_common(1)[0][1] if pairs else 0
    for g, ((true, pred), count) in enumerate(pairs.most_common(a.groups), 1):
        members = [s for s in wrong if (s[1], s[2]) == (true, pred)][: a.per_group]
        found = [analyse(path, label) for path, label, *_rest in members]
        evidence = group_evidence(
            [f.evidence for f in found],
            [f.heatmaps["scorecam"].cam for f in found],
            [f.contrastive for f in found],
            count=count,
            method="scorecam",
            mistakes=len(wrong),
            largest=count == largest,
        )
        user = group_messages(evidence, prompt)[1]["content"]
        records.append(
            {
                "id": f"{a.source}-group-{g:02d}",
                "source": a.source,
                "kind": "group",
                "evidence": evidence.to_dict(),
                "lines": evidence.lines(),
                "question": user,
            }
        )
        print(records[-1]["id"], true, "->", pred, count, file=sys.stderr)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"{len(records)} records -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
