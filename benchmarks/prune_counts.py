"""Per-stage counts of ``kbuild prune``'s defaults on the real curated files in ../shared/datasets/kb,
plus a DCLIP-style short-descriptor case (many birds sharing "a black bill"; no CUB file is stored).

Similarity comes from all-MiniLM-L6-v2 as the similarity extra packages it (``--similarity-model
minilm``): a real text model that works offline (no pretrained CLIP is available here). Token
counts use open_clip's CLIP tokenizer. Each file runs twice: the defaults, and ``--allow-empty``
(the old behaviour) to show which classes the restore step saves.

    python benchmarks/prune_counts.py
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kbuild.clip.sentence import sentence_embedder  # noqa: E402
from kbuild.descriptions import Description  # noqa: E402
from kbuild.prune.core import STAGES, PruneParams, prune_descriptions  # noqa: E402

KB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kb"
FILES = ["WaffleCLIP__descriptors_food101.json", "CuPL__food_prompts_full.json",
         "LaBo__HAM10000_class2concepts.json", "LaBo__HAM10000_selected_concepts.json"]
SHARED = ["a black bill", "a red crown", "white wing bars", "a long tail", "a short bill", "black legs",
          "a yellow breast", "brown back", "a white belly", "grey wings", "a black head", "an orange eye ring"]


def dclip_style(classes: int = 200, seed: int = 3) -> list[Description]:
    """200 birds of 4-6 shared short descriptors; every third bird has one phrase of its own."""
    rng = random.Random(seed)
    out = []
    for k in range(classes):
        texts = rng.sample(SHARED, rng.randint(4, 6)) + ([f"a distinctive mark number {k}"] if k % 3 == 0 else [])
        out += [Description(f"bird {k:03d}", t) for t in texts]
    return out


def token_counter():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    return lambda text: len(tokenizer.tokenizer.encode(text)) + 2 if hasattr(tokenizer, "tokenizer") else 0


def main() -> None:
    embed = sentence_embedder("minilm")
    count = token_counter()
    cases = [(name.split("__")[0] + " " + name.split("__")[1].removesuffix(".json"),
              [Description(c, t) for c, texts in json.loads((KB / name).read_text()).items() for t in texts])
             for name in FILES]
    cases.append(("DCLIP-style birds (synthetic)", dclip_style()))
    head = ["file", "mode", "classes", "before", *STAGES, "restored", "kept", "emptied", "below 3", "s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, descriptions in cases:
        classes = len({d.class_name for d in descriptions})
        for mode, params in (("default", PruneParams()), ("--allow-empty", PruneParams(allow_empty=True))):
            start = time.perf_counter()
            r = prune_descriptions(descriptions, embed, params, token_count=count)
            t = r.totals()
            starved = r.starved_classes()
            row = [label, mode, classes, t.before, *(t.removed[s] for s in STAGES), t.restored, t.kept,
                   len(r.emptied_classes()), len([c for c in starved if c not in r.emptied_classes()]),
                   f"{time.perf_counter() - start:.1f}"]
            print("| " + " | ".join(str(v) for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
