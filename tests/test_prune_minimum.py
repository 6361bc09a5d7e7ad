"""Prune never empties a class silently, and every removal names its partner.

The DCLIP CUB-200 descriptors are short phrases shared by many birds ("a black bill"); with
``cross_class=drop`` a class made only of shared phrases lost every description. ``dclip_style``
rebuilds that shape (deterministically), since the CUB file is not in ../shared.
"""

from __future__ import annotations

import json
import random

import pytest
import test_prune
from test_prune import CUPL_FOOD, DCLIP_FOOD, LABO_RAW, bag_of_words, load

from kbuild.descriptions import Description
from kbuild.errors import UsageError
from kbuild.prune.core import PruneParams, prune_descriptions

SHARED = ["a black bill", "a red crown", "white wing bars", "a long tail", "a short bill", "black legs",
          "a yellow breast", "brown back", "a white belly", "grey wings", "a black head", "an orange eye ring"]

# Fixtures shared with test_prune: bound here by name, so pytest finds them in this module too.
kb = test_prune.kb


def dclip_style(classes: int = 60, seed: int = 3) -> list[Description]:
    """Birds of 4-6 short descriptors each, mostly from a shared pool; every third bird has one
    phrase of its own, the others only shared ones."""
    rng = random.Random(seed)
    out = []
    for k in range(classes):
        name = f"bird {k:02d}"
        texts = rng.sample(SHARED, rng.randint(4, 6))
        if k % 3 == 0:
            texts.append(f"a distinctive mark number {k}")
        out += [Description(name, t, source="test:dclip-style") for t in texts]
    return out


def test_old_behaviour_empties_classes_when_allowed():
    result = prune_descriptions(dclip_style(), bag_of_words, PruneParams(allow_empty=True))
    assert len(result.emptied_classes()) == 40  # the birds with only shared phrases
    assert set(result.emptied_classes()) <= set(result.starved_classes())


def test_default_keeps_every_class_at_its_minimum():
    descriptions = dclip_style()
    result = prune_descriptions(descriptions, bag_of_words, PruneParams())
    kept: dict[str, int] = {}
    for d in result.kept:
        kept[d.class_name] = kept.get(d.class_name, 0) + 1
    assert set(kept) == {d.class_name for d in descriptions}
    assert min(kept.values()) >= 3
    assert not result.emptied_classes() and not result.starved_classes()
    restored = [d for d in result.kept if "restored" in d.extra["prune"]]
    assert sum(r.restored for r in result.per_class.values()) == len(restored) > 0
    # a restored text comes back only where the class needed it, and the total adds up
    assert all(r.before == r.kept + sum(r.removed.values()) for r in result.per_class.values())
    payload = result.to_json()
    assert payload["emptied_classes"] == [] and payload["starved_classes"] == {}
    assert payload["totals"]["restored"] == len(restored)


def test_min_per_class_is_reported_when_it_cannot_be_met():
    # every text of "lone" is a fragment: nothing restorable, so the class is listed, not hidden
    descriptions = dclip_style(6) + [Description("lone", "!!"), Description("lone", "..")]
    result = prune_descriptions(descriptions, bag_of_words, PruneParams(min_per_class=2))
    assert result.emptied_classes() == ["lone"]
    assert result.starved_classes() == {"lone": 0}


@pytest.mark.parametrize("value", [-1, 1.5])
def test_min_per_class_validation(value):
    with pytest.raises(UsageError, match="--min-per-class"):
        PruneParams(min_per_class=value).validate()
    with pytest.raises(UsageError, match="--max-per-class"):
        PruneParams(min_per_class=5, max_per_class=3).validate()


def test_every_removal_names_its_partner():
    result = prune_descriptions(dclip_style(), bag_of_words, PruneParams(allow_empty=True))
    assert result.removed
    for r in result.removed_by("cross_class"):
        assert r.related_classes and r.description.class_name not in r.related_classes
        assert r.related  # the colliding text
    r = next(r for r in result.removed_by("cross_class") if r.description.text == "a black bill")
    holders = {d.class_name for d in dclip_style() if d.text == "a black bill"}
    assert set(r.related_classes) == holders - {r.description.class_name}
    assert "also in bird" in r.explain() and r.to_json()["class_name"] == r.description.class_name


def test_near_duplicate_and_mmr_name_the_kept_text():
    descriptions = [Description("a", t) for t in ("a black bill", "a black bill.", "black bill", "a red crown",
                                                  "white wing bars", "a long tail", "grey wings")]
    result = prune_descriptions(descriptions, bag_of_words, PruneParams(max_per_class=3, min_per_class=1))
    kept = {d.text for d in result.kept}
    for r in result.removed_by("near_duplicate") + result.removed_by("max_per_class"):
        assert r.related in kept and f"of {r.related!r}" in r.explain()
    assert result.removed_by("max_per_class")


@pytest.mark.parametrize("name", [DCLIP_FOOD, CUPL_FOOD, LABO_RAW])
def test_real_files_lose_no_class_by_default(kb, name):
    data, descriptions = load(kb, name)
    result = prune_descriptions(descriptions, bag_of_words, PruneParams())
    non_empty = {c for c, texts in data.items() if any(t.strip() for t in texts)}
    assert {d.class_name for d in result.kept} >= non_empty - {c for c in non_empty if not _has_words(data[c])}
    assert not result.emptied_classes()
    for r in result.removed:
        if r.stage in ("exact", "near_duplicate", "cross_class", "max_per_class"):
            assert r.related, (r.stage, r.description.text)
    json.dumps(result.to_json())


def _has_words(texts: list[str]) -> bool:
    return any(any(ch.isalnum() for ch in t) and len(t.strip()) >= 3 for t in texts)


def test_overlong_counts_the_display_name_clip_sees():
    words = lambda prompt: len(prompt.split()) + 2  # noqa: E731
    descriptions = [Description("mel", "one two three four five six"), Description("mel", "a b"),
                    Description("mel", "c d"), Description("mel", "e f")]
    params = PruneParams(max_tokens=15, dedup_threshold=None, cross_class="off")
    plain = prune_descriptions(descriptions, bag_of_words, params, token_count=words)
    assert plain.totals().fixed == {}  # "a photo of a mel, which has one ... six": 13 words + 2 fits
    shown = prune_descriptions(descriptions, bag_of_words, params, token_count=words,
                               display_names={"mel": "melanoma under dermoscopy in {braces}"})
    kept = {d.text for d in shown.kept}
    # "a photo of a melanoma under dermoscopy in {braces}, which has" is 11 words: 2 left for the text
    assert "one two" in kept and shown.totals().fixed == {"truncated to fit the token limit": 1}
