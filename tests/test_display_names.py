"""Display names from a classes file (``mel: melanoma``) reach every text CLIP sees, the manifest,
children, exports, and kpl's class-name prompts and metrics; folder codes stay the class keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_kpl_cli import FAST, KB
from test_kpl_features import make_image_folder

pytestmark = pytest.mark.usefixtures("clip_env")
DISPLAY = {"bird": "small songbird", "cat": "house cat"}


@pytest.fixture()
def loaded(kbuild, tmp_path):
    (tmp_path / "kb.json").write_text(json.dumps(KB), encoding="utf-8")
    classes = tmp_path / "classes.txt"
    classes.write_text("bird: small songbird\ncat: house cat\ndog\nfish\n", encoding="utf-8")
    result = kbuild("load", tmp_path / "kb.json", "--classes", classes, "--json")
    assert result.code == 0, result.err
    return tmp_path


def embedder(store_home):
    from kbuild import settings
    from kbuild.clip.models import load_clip
    from kbuild.clip.text import TextEmbedder, cache_path

    return TextEmbedder(load_clip(settings.clip_model(None), None), cache_path(store_home))


def stored(store_home, ref="latest"):
    from kbuild.store import SnapshotStore

    return SnapshotStore.open(str(store_home), None).read(ref)


def test_descriptions_are_embedded_with_display_names(kbuild, loaded, clip_env):
    kb = stored(clip_env)
    assert kb.info.manifest["display_names"] == DISPLAY
    assert kb.classes() == sorted(KB) or set(kb.classes()) == set(KB)  # keys unchanged
    row = next(i for i, d in enumerate(kb.descriptions) if (d.class_name, d.text) == ("cat", "whiskers"))
    shown, code = embedder(clip_env).embed_texts(["a photo of a house cat, which has whiskers",
                                                   "a photo of a cat, which has whiskers"])
    assert np.allclose(kb.embeddings[row], shown, atol=1e-5) and not np.allclose(kb.embeddings[row], code, atol=1e-3)
    # children keep them; an export carries them back in
    assert kbuild("prune", "--min-chars", "1").code == 0
    assert stored(clip_env).info.manifest["display_names"] == DISPLAY
    out = loaded / "export.json"
    assert kbuild("export", "latest", "-o", out).code == 0
    back = kbuild("load", out, "--force", "--json")
    assert back.code == 0 and back.json()["published"] is True
    assert stored(clip_env).info.manifest["display_names"] == DISPLAY


def test_kpl_uses_display_names_for_name_prompts_and_reports(kpl, kbuild, loaded, clip_env):
    images = make_image_folder(loaded / "images")
    out = loaded / "out"
    result = kpl("eval", "--kb", "v1", "--data", images, "--out", out, *FAST)
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"]["display_names"] == {"bird": "small songbird", "cat": "house cat", "dog": "dog"}
    assert set(metrics["results"]["clip"]["per_class_recall"]) == {"bird", "cat", "dog"}  # keys stay codes
    # the clip/inmap name prompts were encoded for the display names: they are in the text cache
    probe = embedder(clip_env)
    probe.embed_class_names(["house cat", "small songbird"], "a photo of a {}.")
    assert (probe.cache.hits, probe.cache.misses) == (2, 0)
