"""Write the shared PH2 CLIP ViT-B/16 features as the two files of "Your own embeddings".

    python examples/ph2_own_embeddings.py OUT_DIR [--shared ../shared]

OUT_DIR/ph2_kb.npz holds the 44 description sentences with their own vectors (classes, texts,
embeddings, model_id); OUT_DIR/ph2_features.npz the 200 image features (image_features, labels,
class_names, model_id, name_embeddings). Both name the same embedding space, so `kbuild load` and
`kpl eval --features` use the stored vectors and load no CLIP model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SPACE = "ViT-B-16/openai@concept-based-interpretability-VLM"
DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared"


def write_ph2_files(shared: Path, folder: Path, *, features_space: str = SPACE,
                    names: bool = True) -> tuple[Path, Path, dict]:
    """(kb.npz, features.npz, the source arrays) built from ph2_vitb16.npz and its sentences; the knowledge
    base is in SPACE, the features in ``features_space`` (another one shows the spaces refusal)."""
    source = shared / "datasets" / "features"
    data = dict(np.load(source / "ph2_vitb16.npz"))
    sentences = json.loads((source / "ph2_vitb16_kb.json").read_text())
    class_names = [str(c) for c in data["class_names"]]
    classes = [class_names[i] for i in data["description_class"]]
    seen = {c: 0 for c in class_names}
    texts = []
    for c in classes:  # the sentences are listed per class in the order of the embedding rows
        texts.append(sentences[c][seen[c]])
        seen[c] += 1
    folder.mkdir(parents=True, exist_ok=True)
    kb = folder / "ph2_kb.npz"
    np.savez(kb, classes=np.asarray(classes), texts=np.asarray(texts),
             embeddings=data["description_embeddings"], model_id=np.asarray(SPACE))
    features = folder / "ph2_features.npz"
    extra = {"name_embeddings": data["class_label_embeddings"]} if names else {}
    np.savez(features, image_features=data["image_features"], labels=data["labels"],
             class_names=data["class_names"], model_id=np.asarray(features_space), **extra)
    return kb, features, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    args = parser.parse_args()
    kb, features, _ = write_ph2_files(args.shared, args.out)
    print(kb)
    print(features)


if __name__ == "__main__":
    main()
