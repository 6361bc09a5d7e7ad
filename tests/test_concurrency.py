"""Readers during writes: four processes publish to one store at once while two reader processes poll
``kbuild list``, ``verify``, ``export`` and ``show latest`` in a loop, in the embedded store and on a
``chroma run`` server.

``test_store.py`` and ``test_server_mode.py`` already show that four concurrent writers each get their own
version; this adds what a team sees meanwhile: readers only ever see complete snapshots (each new one
verifies and exports every description its manifest counts), a snapshot once seen never changes or
vanishes, ``latest`` always resolves, and nothing a writer published is lost or overwritten.
"""

from __future__ import annotations

import json

import forkserver
import pytest

from helpers import cli_env, write_class_lists

pytestmark = pytest.mark.slow

WRITERS, READERS = 4, 2


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    return forkserver.shared(tmp_path_factory.mktemp("forks"))


@pytest.fixture(params=["embedded", "server"])
def store(request, tmp_path, tiny_model):
    url = request.getfixturevalue("chroma_url") if request.param == "server" else ""
    env = cli_env(KBUILD_STORE=str(tmp_path / "home"), KPL_CLIP_MODEL=tiny_model)
    if url:
        env["KBUILD_CHROMA_URL"] = url
    return tmp_path / "home", url, env


@pytest.mark.timeout(180)
def test_readers_polling_during_four_concurrent_writers_see_only_complete_snapshots(forks, store, tmp_path):
    home, url, env = store
    first = forks.run("kbuild", "load", write_class_lists(tmp_path / "base.json", 4, 5, "base"), "--json", env=env)
    assert forks.wait(first, 60) == 0, first.err.read_text()
    base = json.loads(first.out.read_text())
    files = [write_class_lists(tmp_path / f"w{k}.json", classes=12, per_class=25, prefix=f"writer {k}")
             for k in range(WRITERS)]
    stop = tmp_path / "stop"
    readers = [forks.run("reader", str(home), url, str(stop), env=env) for _ in range(READERS)]
    try:
        writers = [forks.run("kbuild", "load", f, "--json", env=env) for f in files]
        codes = [forks.wait(w, 120) for w in writers]
    finally:
        stop.touch()
    reader_codes = [forks.wait(r, 60) for r in readers]
    assert codes == [0] * WRITERS, [w.err.read_text()[-1000:] for w in writers]
    assert reader_codes == [0] * READERS, [r.err.read_text()[-1000:] for r in readers]

    published = {base["snapshot"]: base["content_hash"]}
    for w in writers:
        payload = json.loads(w.out.read_text())
        published[payload["snapshot"]] = payload["content_hash"]
    assert len(published) == WRITERS + 1  # every writer got its own version
    for r in readers:
        seen = json.loads(r.out.read_text())
        assert seen["problems"] == [], seen["problems"]
        assert seen["seen"] == published  # by the end, each reader saw every snapshot, each complete
        assert seen["counts"] == sorted(seen["counts"])  # snapshots only ever appear
    # The readers really overlapped the writes: between them they saw intermediate states.
    states = {n for r in readers for n in json.loads(r.out.read_text())["counts"]}
    assert len(states) >= 2, states

    final = forks.run("report", str(home), url, "", env=env)
    assert forks.wait(final, 60) == 0, final.err.read_text()
    report = json.loads(final.out.read_text())
    assert report["snapshots"] == published  # none lost or overwritten
    assert all(v["ok"] for v in report["verified"].values()), report["verified"]
    assert not [name for name in report["collections"] if name.startswith("kbuild-tmp-")]
