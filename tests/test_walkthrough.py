"""The README walk-through, as a newcomer runs it: the demo's steps against a `chroma run` server.

Every command here is one the README and `examples/demo.sh` show; the store is a real Chroma
server on 127.0.0.1 and the images come from the demo's generator.
"""

from __future__ import annotations

import sys

from helpers import REPO, cli_env, run_forked

sys.path.insert(0, str(REPO / "examples"))
from make_demo_images import write_images  # noqa: E402


def test_demo_steps_against_a_chroma_server(forks, chroma_url, tiny_model, tmp_path):
    env = cli_env(KBUILD_CHROMA_URL=chroma_url, KBUILD_STORE=str(tmp_path / "home"),
                  KPL_CLIP_MODEL=tiny_model, KPL_CLIP_PRETRAINED="none")
    images = write_images(tmp_path / "images", per_class=4)

    def run(prog, *args):
        result = run_forked(forks, prog, *args, env=env)  # a fresh process per command
        assert result.code == 0, f"{prog} {' '.join(args)} failed: {result.err}"
        return result

    run("kbuild", "load", str(REPO / "examples" / "medical_kb.json"), "--classes", str(REPO / "examples" / "classes.txt"))
    pruned = run("kbuild", "prune", "v1", "--json").json()
    assert pruned["snapshot"] == "snapshot_v2" and pruned["totals"]["removed"]["cross_class"] > 0
    diff = run("kbuild", "diff", "v1", "v2", "--json").json()
    assert diff["summary"]["descriptions_removed"] == sum(pruned["totals"]["removed"].values())
    listed = run("kbuild", "list", "--json").json()
    assert [s["name"] for s in listed] == ["snapshot_v1", "snapshot_v2"]
    # Nothing went into a local embedded store: the server holds it all.
    assert not (tmp_path / "home" / "chroma").exists()

    out = tmp_path / "eval"
    evaluated = run("kpl", "eval", "--kb", "v2", "--data", str(images), "--out", str(out), "--json").json()
    assert evaluated["snapshot"]["content_hash"] == listed[1]["manifest"]["content_hash"]
    assert {"metrics.json", "confusion_matrix.png", "predictions.csv"} <= {p.name for p in out.iterdir()}
    compared = run("kpl", "compare", "--kb", "v1", "--kb", "v2", "--data", str(images), "--json")
    assert "snapshot_v1" in compared.out and "snapshot_v2" in compared.out
