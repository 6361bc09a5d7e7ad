"""Prune as a pure function: planted cases checked stage by stage, then the real curated files.

The planted cases use hand-made unit vectors on an orthonormal basis, so every similarity is
known in closed form. The real-file tests need text embeddings without a pretrained CLIP (none is
available offline), so they use an honest stand-in: a signed hashed bag of words per text. The
facts they check (exact duplicates, whitespace, fragments, phrases shared across classes) do not
depend on the embedding model.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kbuild.descriptions import Description, normalise_text
from kbuild.errors import KbuildError, UsageError
from kbuild.prune.core import TABLE_COLUMNS, PruneParams, prune_descriptions
from kbuild.prune.similarity import greedy_suppress, pairs_above, unit_rows

LABO_RAW = "LaBo__HAM10000_class2concepts.json"
LABO_SELECTED = "LaBo__HAM10000_selected_concepts.json"
DCLIP_FOOD = "WaffleCLIP__descriptors_food101.json"
CUPL_FOOD = "CuPL__food_prompts_full.json"

DIM = 64
BASIS = np.linalg.qr(np.random.default_rng(7).standard_normal((DIM, DIM)))[0].T  # rows orthonormal
AXIS = {"alpha": BASIS[0], "beta": BASIS[1], "gamma": BASIS[2]}


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def e(k: int) -> np.ndarray:
    """A direction private to one text (orthogonal to the class axes and to each other)."""
    return BASIS[10 + k]


# --- planted knowledge base --------------------------------------------------------------------

def planted() -> tuple[list[Description], np.ndarray]:
    """Three classes of five clean texts each (same-class cosine 0.64, cross-class 0), plus
    one planted case per stage; see the comments for each one's exact geometry."""
    rows: list[tuple[str, str, np.ndarray]] = []
    k = 0
    for name in AXIS:
        for i in range(5):
            rows.append((name, f"{name} trait {i}", 0.8 * AXIS[name] + 0.6 * e(k)))
            k += 1
    alpha0 = rows[0][2]
    # near duplicate of "alpha trait 0": cosine 1/sqrt(1.0225) = 0.98894, less central
    rows.append(("alpha", "alpha trait 0, reworded", unit(alpha0 + 0.15 * e(40))))
    # exact duplicate after whitespace normalisation (also one whitespace repair)
    rows.append(("alpha", "  alpha   trait 1 ", rows[1][2]))
    # sanitise: punctuation-only, whitespace-only (empty), too short
    rows += [("beta", ".", e(41)), ("gamma", "   ", e(42)), ("alpha", "ab", e(43))]
    # identical text in alpha and beta, leaning to alpha (0.6 vs 0.5 on the class axes)
    generic = unit(0.6 * AXIS["alpha"] + 0.5 * AXIS["beta"] + 0.62 * e(44))
    rows += [("alpha", "a clinical photo", generic), ("beta", "a clinical photo", generic)]
    # near-identical texts in beta and gamma: cosine 1/sqrt(1.0144) = 0.99292, leaning to beta
    ring = unit(0.3 * AXIS["beta"] + 0.25 * AXIS["gamma"] + 0.9 * e(45))
    rows += [("beta", "a thin ring", ring), ("gamma", "a thin ring shape", unit(ring + 0.12 * e(46)))]
    # a gamma text that sits near alpha: negative margin
    rows.append(("gamma", "looks like alpha", unit(0.7 * AXIS["alpha"] + 0.2 * AXIS["gamma"] + 0.68 * e(47))))
    descriptions = [Description(c, t, source="test:planted") for c, t, _ in rows]
    return descriptions, np.stack([v for _, _, v in rows]).astype(np.float32)


def run(descriptions, x, **params):
    return prune_descriptions(descriptions, x, PruneParams(**params))


def removals(result, stage: str) -> dict[tuple[str, str], tuple[str, float | None, str | None]]:
    """(class, text) -> (reason, score, partner): the other class when there is one, else the kept text."""
    return {(r.description.class_name, r.description.text):
            (r.reason, r.score, r.related_classes[0] if r.related_classes else r.related)
            for r in result.removed_by(stage)}


def loo_margin(x: np.ndarray, labels: list[str], i: int) -> tuple[float, str]:
    """Independent reference: cosine to own centroid without x_i minus best other centroid."""
    own = [j for j, c in enumerate(labels) if c == labels[i] and j != i]
    best, best_class = -np.inf, ""
    for c in sorted(set(labels) - {labels[i]}):
        sim = float(x[i] @ unit(x[[j for j, lab in enumerate(labels) if lab == c]].sum(axis=0)))
        best, best_class = (sim, c) if sim > best else (best, best_class)
    return float(x[i] @ unit(x[own].sum(axis=0))) - best, best_class


def test_sanitise_removes_planted_fragments_and_counts_repairs():
    result = run(*planted())
    assert removals(result, "sanitise") == {
        ("beta", "."): ("punctuation-only", None, None),
        ("gamma", "   "): ("empty", None, None),
        ("alpha", "ab"): ("too short (< 3 characters)", 2.0, None),
    }
    assert result.per_class["alpha"].fixed == {"stripped leading/trailing whitespace": 1,
                                               "collapsed inner whitespace": 1}


def test_exact_duplicate_keeps_the_clean_copy():
    result = run(*planted())
    assert removals(result, "exact") == {("alpha", "  alpha   trait 1 "): ("exact duplicate", 1.0, "alpha trait 1")}
    kept = [d for d in result.kept if d.text == "alpha trait 1"]
    assert len(kept) == 1 and kept[0].extra["prune"].get("fixes") is None


def test_near_duplicate_keeps_the_more_central_text():
    result = run(*planted())
    got = removals(result, "near_duplicate")
    assert list(got) == [("alpha", "alpha trait 0, reworded")]
    reason, score, related = got[("alpha", "alpha trait 0, reworded")]
    assert (reason, related) == ("near duplicate", "alpha trait 0")
    assert score == pytest.approx(1 / np.sqrt(1.0225), abs=1e-5)
    # a threshold above the pair's cosine keeps both
    assert not run(*planted(), dedup_threshold=0.99).removed_by("near_duplicate")


def test_cross_class_drop_removes_every_copy():
    result = run(*planted())
    ring = 1 / np.sqrt(1.0144)
    got = removals(result, "cross_class")
    assert set(got) == {("alpha", "a clinical photo"), ("beta", "a clinical photo"),
                        ("beta", "a thin ring"), ("gamma", "a thin ring shape")}
    assert got[("alpha", "a clinical photo")] == ("identical text in another class", 1.0, "beta")
    assert got[("beta", "a clinical photo")] == ("identical text in another class", 1.0, "alpha")
    assert got[("beta", "a thin ring")][::2] == ("near-identical text in another class", "gamma")
    assert got[("beta", "a thin ring")][1] == pytest.approx(ring, abs=1e-5)
    assert got[("gamma", "a thin ring shape")][2] == "beta"
    partner = {r.description.text: (r.related, r.related_classes) for r in result.removed_by("cross_class")
               if r.description.class_name != "alpha"}
    assert partner["a thin ring"] == ("a thin ring shape", ["gamma"])
    assert partner["a clinical photo"] == ("a clinical photo", ["alpha"])


@pytest.mark.parametrize("reference", ["centroid", "name"])
def test_cross_class_best_keeps_the_best_fitting_class(reference):
    descriptions, x = planted()
    names = {c: AXIS[c] for c in AXIS} if reference == "name" else None
    result = prune_descriptions(descriptions, x, PruneParams(cross_class="best", margin_reference=reference),
                                name_embeddings=names)
    got = removals(result, "cross_class")
    assert set(got) == {("beta", "a clinical photo"), ("gamma", "a thin ring shape")}
    assert got[("beta", "a clinical photo")][0].startswith("identical text in another class")
    assert got[("beta", "a clinical photo")][2] == "alpha"
    assert got[("gamma", "a thin ring shape")][2] == "beta"
    kept = {(d.class_name, d.text): d for d in result.kept}
    assert "cross_class_fit" in kept[("alpha", "a clinical photo")].extra["prune"]
    assert ("beta", "a thin ring") in kept


def test_cross_class_threshold_none_keeps_near_identical_texts():
    got = removals(run(*planted(), cross_class_threshold=None), "cross_class")
    assert set(got) == {("alpha", "a clinical photo"), ("beta", "a clinical photo")}


def test_margin_stage_removes_the_text_closer_to_another_class():
    descriptions, x = planted()
    result = run(descriptions, x, min_margin=0.05, margin_reference="centroid")
    got = removals(result, "margin")
    assert list(got) == [("gamma", "looks like alpha")]
    survivors = [(d.class_name, d.text) for d in result.kept] + [("gamma", "looks like alpha")]
    index = {(d.class_name, d.text): i for i, d in enumerate(descriptions)}
    xs = unit_rows(x[[index[s] for s in survivors]])
    expected, other = loo_margin(xs, [c for c, _ in survivors], len(survivors) - 1)
    reason, score, related = got[("gamma", "looks like alpha")]
    assert (reason, related) == ("closer to another class than to its own", other) and other == "alpha"
    assert score == pytest.approx(expected, abs=1e-5) and score < -0.05
    assert all(d.extra["prune"]["margin"] >= -0.05 for d in result.kept)


def test_margin_with_name_references():
    descriptions, x = planted()
    names = {c: AXIS[c] for c in AXIS}
    result = prune_descriptions(descriptions, x, PruneParams(min_margin=0.0), name_embeddings=names)
    got = removals(result, "margin")
    assert list(got) == [("gamma", "looks like alpha")]
    norm = np.sqrt(0.7**2 + 0.2**2 + 0.68**2)
    assert got[("gamma", "looks like alpha")][1] == pytest.approx((0.2 - 0.7) / norm, abs=1e-5)


def test_name_reference_without_names_is_a_usage_error():
    with pytest.raises(UsageError, match="--margin-reference centroid"):
        run(*planted(), min_margin=0.1)


def reference_mmr(x: np.ndarray, n: int, weight: float = 0.5) -> list[int]:
    """Plain-loop MMR: relevance = cosine to the normalised mean, redundancy = max cosine to picks."""
    relevance = x @ unit(x.sum(axis=0))
    chosen: list[int] = []
    while len(chosen) < n:
        def score(j):
            penalty = max((float(x[j] @ x[s]) for s in chosen), default=0.0)
            return weight * relevance[j] - (1 - weight) * penalty
        chosen.append(max((j for j in range(len(x)) if j not in chosen), key=lambda j: (score(j), -j)))
    return chosen


def test_max_per_class_picks_for_diversity_not_order():
    # "a ..." texts sort first and are near copies; the "z ..." texts are spread out.
    cluster = [unit(AXIS["alpha"] + 0.3 * e(0) + w * e(1 + i)) for i, w in enumerate((0.03, 0.02, 0.04))]
    spread = [unit(AXIS["alpha"] + w * e(5 + i)) for i, w in enumerate((0.7, 0.8, 0.9))]
    texts = ["a copy 0", "a copy 1", "a copy 2", "z spread 0", "z spread 1", "z spread 2"]
    x = np.stack(cluster + spread).astype(np.float32)
    result = run([Description("alpha", t) for t in texts], x, dedup_threshold=None, max_per_class=3)
    expected = reference_mmr(x, 3)
    assert [d.text for d in sorted(result.kept, key=lambda d: d.extra["prune"]["mmr_rank"])] == \
        [texts[i] for i in expected]
    kept = {d.text for d in result.kept}
    assert len(kept & {"a copy 0", "a copy 1", "a copy 2"}) == 1  # one of the near copies, not three
    assert {r.stage for r in result.removed} == {"max_per_class"}


def word_tokens(prompt: str) -> int:
    """A stand-in tokenizer: one token per word, plus start and end tokens."""
    return len(prompt.split()) + 2


def test_overlong_truncates_by_words_and_reembeds():
    descriptions = [Description("alpha", "red scaly patch with a rough border and a crust on top"),
                    Description("alpha", "small dome")]
    seen: list[str] = []

    def embed(texts):
        seen.extend(texts)
        return np.stack([unit(AXIS["alpha"] + 0.5 * e(len(t) % 20)) for t in texts])

    # template "a photo of a {}, which has {}" is 6 words + 1 class word + 2 = 9 tokens before the text
    result = prune_descriptions(descriptions, embed, PruneParams(max_tokens=14), token_count=word_tokens)
    kept = {d.extra["prune"].get("original_text", d.text): d for d in result.kept}
    long = kept["red scaly patch with a rough border and a crust on top"]
    assert long.text == "red scaly patch with a"
    assert long.extra["prune"]["fixes"] == ["truncated to fit the token limit"]
    assert long.extra["prune"]["tokens_before_truncation"] == 21.0
    assert "red scaly patch with a" in seen and "small dome" in seen
    assert result.per_class["alpha"].fixed == {"truncated to fit the token limit": 1}
    dropped = prune_descriptions(descriptions, embed, PruneParams(max_tokens=14, overlong="drop"),
                                 token_count=word_tokens)
    assert removals(dropped, "overlong") == {
        ("alpha", descriptions[0].text): ("over-long (21 > 14 tokens)", 21.0, None)}


def test_overlong_is_skipped_without_a_token_counter():
    result = run(*planted())
    assert result.skipped["overlong"] == "no token counter given"
    assert result.per_class["alpha"].removed["overlong"] == 0


def test_truncated_texts_with_cached_rows_are_noted():
    descriptions = [Description("alpha", "one two three four five six")]
    result = prune_descriptions(descriptions, np.ones((1, 4)), PruneParams(max_tokens=12), token_count=word_tokens)
    assert result.kept[0].text == "one two three"  # 7 template words + 2 + 3 = 12
    assert "keep the embedding of their full text" in result.notes[0]
    nothing_fits = prune_descriptions([Description("alpha", "one-very-long-token two")], np.ones((1, 4)),
                                      PruneParams(max_tokens=9), token_count=word_tokens)
    assert removals(nothing_fits, "overlong") == {
        ("alpha", "one-very-long-token two"): ("over-long (11 > 9 tokens); no shorter word prefix fits", 11.0, None)}


def snapshot_of(result):
    kept = [(d.class_name, d.text, json.dumps(d.extra, sort_keys=True)) for d in result.kept]
    removed = [(r.description.id, r.description.text, r.stage, r.reason, r.score, r.related) for r in result.removed]
    return kept, removed, result.to_json()["per_class"]


@pytest.mark.parametrize("params", [
    dict(),
    dict(cross_class="best", margin_reference="centroid", min_margin=0.05),
    dict(max_per_class=3, margin_reference="centroid", min_margin=0.0),
])
def test_result_does_not_depend_on_input_order(params):
    descriptions, x = planted()
    reference = snapshot_of(run(descriptions, x, **params))
    for seed in range(5):
        order = list(range(len(descriptions)))
        random.Random(seed).shuffle(order)
        assert snapshot_of(run([descriptions[i] for i in order], x[order], **params)) == reference


def test_every_removed_and_kept_description_is_accounted_for():
    descriptions, x = planted()
    result = run(descriptions, x, margin_reference="centroid", min_margin=0.05)
    assert len(result.kept) + len(result.removed) == len(descriptions)
    rows = result.table_rows()
    assert rows[-1][0] == "total" and len(rows[-1]) == len(TABLE_COLUMNS)
    for report in result.per_class.values():
        assert report.before == report.kept + sum(report.removed.values())
    json.dumps(result.to_json())
    assert all("prune" in d.extra and d.source == "test:planted" for d in result.kept)


@pytest.mark.parametrize("field, value, flag", [
    ("dedup_threshold", 1.5, "--dedup-threshold"),
    ("cross_class_threshold", -1.01, "--cross-class-threshold"),
    ("min_margin", float("nan"), "--min-margin"),
    ("max_per_class", 0, "--max-per-class"),
    ("max_per_class", -3, "--max-per-class"),
    ("min_chars", -1, "--min-chars"),
    ("max_tokens", 0, "--max-tokens"),
    ("cross_class", "keep", "--cross-class"),
    ("overlong", "cut", "--overlong"),
    ("margin_reference", "image", "--margin-reference"),
    ("dedup_threshold", "high", "--dedup-threshold"),
])
def test_params_validation(field, value, flag):
    with pytest.raises(UsageError) as info:
        PruneParams(**{field: value}).validate()
    message = str(info.value)
    assert message.startswith(flag) and "\n" not in message and info.value.exit_code == 2


def test_bad_embeddings_are_one_line_errors():
    descriptions, x = planted()
    with pytest.raises(KbuildError, match="one row per description"):
        run(descriptions, x[:-1])
    zeroed = x.copy()
    zeroed[0] = 0
    with pytest.raises(KbuildError, match="zero or not finite"):
        run(descriptions, zeroed)
    with pytest.raises(UsageError, match="two \\{\\} fields"):
        prune_descriptions(descriptions, x, PruneParams(), template="a photo of {}")


def test_empty_input():
    result = prune_descriptions([], np.zeros((0, 4)), PruneParams())
    assert result.kept == [] and result.removed == [] and result.per_class == {}


# --- the blocked similarity helpers ------------------------------------------------------------

def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((n // 5, dim)))
    # per-row noise from 0.05 to 0.4 of the norm: pairs land on both sides of the thresholds
    noise = rng.uniform(0.05, 0.4, (n, 1)) / np.sqrt(dim) * rng.standard_normal((n, dim))
    return unit_rows(centres[rng.integers(0, len(centres), n)] + noise)


def naive_suppress(x, threshold):
    kept, by = [], []
    for i in range(len(x)):
        sims = [(float(x[i] @ x[j]), j) for j in kept]
        best = max(sims, key=lambda s: (s[0], -s[1]), default=(-np.inf, -1))
        by.append(best[1] if best[0] >= threshold else -1)
        if best[0] < threshold:
            kept.append(i)
    return np.array(by)


@pytest.mark.parametrize("block", [7, 64, 2048])
def test_greedy_suppress_matches_the_plain_loop(block):
    x = clustered(300, 16, seed=block)
    by, sim = greedy_suppress(x, 0.9, block=block)
    assert (by == naive_suppress(x, 0.9)).all() and (by >= 0).sum() > 20
    assert np.allclose(sim[by >= 0], np.einsum("ij,ij->i", x[by >= 0], x[by[by >= 0]]), atol=1e-6)


@pytest.mark.parametrize("block, dim", [(16, 8), (50, 48), (2048, 96)])
def test_pairs_above_is_exact(block, dim):
    x = clustered(400, dim, seed=dim)
    found = {(int(i), int(j)) for a, b, _ in pairs_above(x, 0.95, block=block) for i, j in zip(a, b)}
    s = x @ x.T
    expected = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(s >= 0.95, k=1)))}
    assert found == expected and len(expected) > 10


def test_pairs_above_is_exact_when_most_pairs_are_candidates():
    # one tight cluster: every pair passes the bound, so blocks take the row-product path
    rng = np.random.default_rng(5)
    x = unit_rows(np.ones((150, 24)) + rng.uniform(0.05, 0.6, (150, 1)) * rng.standard_normal((150, 24)))
    found = {(int(i), int(j)) for a, b, _ in pairs_above(x, 0.9, block=40) for i, j in zip(a, b)}
    expected = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(x @ x.T >= 0.9, k=1)))}
    assert found == expected and 500 < len(expected) < 150 * 149 // 2


def test_pairs_above_memory_stays_block_sized():
    x = clustered(6000, 32, seed=3)
    tracemalloc.start()
    n_pairs = sum(len(i) for i, _, _ in pairs_above(x, 0.97, block=512))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n_pairs > 0
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB; a full 6000 x 6000 float32 matrix is 144 MB"


# --- real curated knowledge bases --------------------------------------------------------------

def bag_of_words(texts: list[str], dim: int = 512) -> np.ndarray:
    """Stand-in text embedding: signed hashed counts of words and word pairs (blake2b, stable).

    Word pairs keep some word order ("painful or itchy" is not "itchy or painful"), as CLIP does.
    """
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        words = re.findall(r"[a-z0-9]+", text.lower())
        for token in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
            h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
            out[row, h % dim] += 1.0 if (h >> 32) & 1 else -1.0
        if not out[row].any():
            out[row, 0] = 1.0  # punctuation-only texts: any non-zero row; sanitise drops them
    return out


@pytest.fixture(scope="module")
def kb(kb_files) -> Path:
    return kb_files


def load(folder: Path, name: str) -> tuple[dict[str, list[str]], list[Description]]:
    data = json.loads((folder / name).read_text(encoding="utf-8"))
    return data, [Description(c, t, source=f"curated:{name}") for c, texts in data.items() for t in texts]


def shared_phrases(data: dict[str, list[str]]) -> set[str]:
    holders: dict[str, set[str]] = {}
    for c, texts in data.items():
        for t in texts:
            holders.setdefault(normalise_text(t), set()).add(c)
    return {t for t, classes in holders.items() if len(classes) > 1}


def test_labo_raw_cross_class_and_exact(kb):
    data, descriptions = load(kb, LABO_RAW)
    shared = shared_phrases(data)
    assert len(shared) == 248
    result = prune_descriptions(descriptions, bag_of_words, PruneParams())
    assert removals(result, "exact") == {("melanocytic nevi", "develop into skin lesions"):
                                         ("exact duplicate", 1.0, "develop into skin lesions")}
    identical = {r.description.text for r in result.removed_by("cross_class")
                 if r.reason == "identical text in another class"}
    assert identical == shared  # all 248 found, and nothing else called identical
    kept = {d.text for d in result.kept}
    assert not kept & shared
    instances = sum(1 for c, texts in data.items() for t in texts if t in shared)
    stages = Counter(r.stage for r in result.removed if r.description.text in shared)
    print(f"\nLaBo raw: {len(shared)} shared phrases, {instances} instances; removed by stage {dict(stages)}")
    assert sum(stages.values()) == instances


def test_labo_raw_best_mode_keeps_a_shared_phrase_in_one_class_at_most(kb):
    data, descriptions = load(kb, LABO_RAW)
    shared = shared_phrases(data)
    params = PruneParams(cross_class="best", margin_reference="centroid")
    result = prune_descriptions(descriptions, bag_of_words, params)
    homes = Counter(d.text for d in result.kept if d.text in shared)
    assert max(homes.values()) == 1
    print(f"\nLaBo raw, cross_class=best: {len(homes)} of {len(shared)} shared phrases kept in one class")


def test_labo_result_does_not_depend_on_file_order(kb):
    _, descriptions = load(kb, LABO_RAW)
    x = bag_of_words([d.text for d in descriptions])
    params = dict(cross_class="best", margin_reference="centroid", max_per_class=50)
    reference = snapshot_of(run(descriptions, x, **params))
    order = list(range(len(descriptions)))
    random.Random(1).shuffle(order)
    assert snapshot_of(run([descriptions[i] for i in order], x[order], **params)) == reference


def test_cupl_food_counts_by_stage(kb):
    data, descriptions = load(kb, CUPL_FOOD)
    raw = [(c, t) for c, texts in data.items() for t in texts]
    repeats = sum(n - 1 for n in Counter(raw).values())
    dot_repeats = sum(n - 1 for (c, t), n in Counter(raw).items() if t == ".")
    assert (repeats, dot_repeats) == (73, 3)
    result = prune_descriptions(descriptions, bag_of_words, PruneParams())
    fragments = result.removed_by("sanitise")
    assert len(fragments) == 27 and all(len(r.description.text) < 5 for r in fragments)
    assert {r.reason for r in fragments} == {"punctuation-only"}
    # the 3 repeats of "." are already gone as fragments, so exact finds the other 70
    assert len(result.removed_by("exact")) == repeats - dot_repeats == 70
    fixed = result.totals().fixed
    assert fixed["stripped leading/trailing whitespace"] == 66
    # two more strings have newlines only inside (bulleted lists); one of the 66 has both
    assert fixed["collapsed inner whitespace"] == 3
    assert sum(1 for _, t in raw if t != normalise_text(t) and t.strip() not in ("", ".")) == 68


def test_cupl_same_counts_with_min_chars_five(kb):
    _, descriptions = load(kb, CUPL_FOOD)
    result = prune_descriptions(descriptions, bag_of_words, PruneParams(min_chars=5))
    assert len(result.removed_by("sanitise")) == 27


def test_default_min_chars_keeps_short_real_descriptors(kb):
    _, descriptions = load(kb, DCLIP_FOOD)
    result = prune_descriptions(descriptions, bag_of_words, PruneParams(cross_class="off", dedup_threshold=None))
    assert not result.removed_by("sanitise")
    assert {"red", "fur", "eggs"} <= {d.text for d in result.kept}


def test_max_per_class_50_on_labo_raw_only_trims_classes_over_the_cap(kb):
    """LaBo's raw list has hundreds of concepts per class (its published selection keeps 50): the
    cap runs last, so it keeps exactly 50 of what the other stages kept in each larger class, drops
    nothing else, and records every text it drops under its own stage."""
    data, descriptions = load(kb, LABO_RAW)
    selected = json.loads((kb / LABO_SELECTED).read_text(encoding="utf-8"))
    assert {len(texts) for texts in selected.values()} == {50} and not shared_phrases(selected)
    uncapped = prune_descriptions(descriptions, bag_of_words, PruneParams())
    capped = prune_descriptions(descriptions, bag_of_words, PruneParams(max_per_class=50))

    def by_class(kept) -> dict[str, set[str]]:
        grouped: dict[str, set[str]] = {c: set() for c in data}
        for d in kept:
            grouped[d.class_name].add(d.text)
        return grouped

    before, after = by_class(uncapped.kept), by_class(capped.kept)
    assert min(len(texts) for texts in before.values()) > 50  # the cap has work in every class
    trimmed = {(r.description.class_name, r.description.text) for r in capped.removed_by("max_per_class")}
    for c in data:
        assert after[c] <= before[c] and len(after[c]) == 50, c
        assert {t for k, t in trimmed if k == c} == before[c] - after[c], c
    assert all("MMR" in r.reason for r in capped.removed_by("max_per_class"))
