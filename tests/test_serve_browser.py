"""`kbuild serve` in a real browser: Playwright driving the system's Chromium (headless, no download).

A module fixture builds a store (v1 loaded, v2 pruned from it), starts the real `kbuild serve` command
on a free port, and reads the token from its start-up line. Screenshots of the snapshot and compare
pages go to tests/output/serve/ for a person to look at. Without Playwright or Chromium these tests
skip with the reason; the HTTP-level tests in test_serve_http.py still run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, cli_env, stop_process

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

SHOTS = REPO / "tests" / "output" / "serve"
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> striped fur'
KB = {"cat": ["whiskers on the muzzle", "pointed ears", "a long tail", XSS, "tiny"],
      "dog": ["floppy ears", "a wet nose", "a wagging tail"]}


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium); browser tests skipped")


def kbuild_in_process(*args: str) -> int:
    """Run a kbuild command in this process (torch is loaded already: much faster than a new process)."""
    from kbuild.cli.app import app, run_with_boundary

    return run_with_boundary(app, "kbuild", [str(a) for a in args])


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    """(base URL, token, env) of a running `kbuild serve` over a store holding v1 and its pruned child v2."""
    root = tmp_path_factory.mktemp("serve_browser")
    env = cli_env(KBUILD_STORE=str(root / "store"), KPL_CLIP_MODEL=tiny_model)
    (root / "kb.json").write_text(json.dumps(KB))
    where = ["--store", env["KBUILD_STORE"], "--model", tiny_model]
    assert kbuild_in_process("load", root / "kb.json", *where) == 0
    # Only the length filter: with a random tiny CLIP, similarity-based stages would drop arbitrary texts.
    assert kbuild_in_process("prune", "v1", "--min-chars", "5", "--dedup-threshold", "1.0",
                             "--cross-class", "off", *where) == 0
    errors = open(root / "serve.err", "w")
    proc = subprocess.Popen([sys.executable, "-c", "from kbuild.cli import main; main()", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=errors, text=True, env=env, cwd=REPO)
    line = proc.stdout.readline()
    if not line.startswith("kbuild serve: http://127.0.0.1:"):
        stop_process(proc)
        pytest.fail(f"kbuild serve did not start: {line!r} {(root / 'serve.err').read_text()}")
    url = line.split()[2]
    yield url.split("?")[0], url.split("token=")[1], env
    stop_process(proc)
    errors.close()


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    with sync_api.sync_playwright() as playwright:
        try:
            # --no-sandbox: Chromium refuses its sandbox when run as root (CI containers).
            launched = playwright.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        except sync_api.Error as exc:
            pytest.skip(f"Playwright cannot drive the Chromium at {path}: {str(exc).splitlines()[0]}")
        yield launched
        launched.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda err: problems.append(str(err)))
    opened.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    opened.problems = problems
    yield opened
    context.close()
    assert not [p for p in problems if not p.startswith("dialog: Discard")], problems


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)
    print(f"screenshot: {SHOTS / name}")


def open_app(page, served, with_token: bool = True, reviewer: str | None = None) -> None:
    base, token, _ = served
    page.goto(base + (f"?token={token}" if with_token else ""))
    if reviewer:
        page.fill("#reviewer", reviewer)
        page.press("#reviewer", "Enter")
    page.wait_for_selector("#lineage")


def rows(page, cls: str):
    return page.locator(f'section.class-block[data-class="{cls}"] tr.desc')


def row(page, text: str):
    return page.locator("tr.desc", has=page.locator("td.text", has_text=text)).first


def test_browse_lineage_snapshot_and_filter(page, served):
    open_app(page, served)
    assert "token=" not in page.url  # the token leaves the address bar (and the history)
    child = page.locator('li.lineage-node[data-name="snapshot_v1"] li.lineage-node[data-name="snapshot_v2"]')
    assert "prune" in child.inner_text() and "1 removed" in child.inner_text()
    child.locator("a.snap").first.click()
    page.wait_for_selector("#descriptions tr.desc")
    assert page.locator("h1").inner_text().startswith("snapshot_v2")
    assert "prune" in page.locator("dl.provenance").inner_text()
    removed = page.locator("#removed tr.removed-row")
    assert removed.count() == 1 and "tiny" in removed.inner_text() and "sanitise" in removed.inner_text()
    assert "4.000" not in removed.inner_text() and "4 characters" in removed.inner_text()  # a length, not a similarity
    assert rows(page, "cat").count() == 4 and rows(page, "dog").count() == 3
    page.select_option("#filter-class", "dog")
    assert rows(page, "cat").count() == 0 and rows(page, "dog").count() == 3
    page.fill("#filter-text", "EARS")
    assert rows(page, "dog").count() == 1 and "floppy ears" in rows(page, "dog").inner_text()
    page.select_option("#filter-class", "")
    assert page.locator("#descriptions tr.desc").count() == 2  # "pointed ears" and "floppy ears"
    page.fill("#filter-text", "")
    shot(page, "snapshot_page.png")


def test_compare_two_snapshots_side_by_side(page, served):
    open_app(page, served)
    page.click("text=Compare")
    page.select_option("#old", "snapshot_v1")
    page.select_option("#new", "snapshot_v2")
    page.click("#compare-go")
    summary = page.wait_for_selector("#diff-summary")
    assert "1 removed" in summary.inner_text()
    block = page.locator('section.class-diff[data-class="cat"]')
    assert "Modified class: cat" in block.inner_text()
    assert block.locator("tr.removed td.old").inner_text().startswith("tiny")
    assert "sanitise" in block.locator("tr.removed .reason").inner_text()
    assert block.locator("th").all_inner_texts() == ["snapshot_v1", "snapshot_v2"]
    shot(page, "compare_page.png")


def test_untrusted_text_renders_as_text(page, served):
    open_app(page, served)
    page.goto(served[0] + "#/s/snapshot_v1")
    page.wait_for_selector("#descriptions tr.desc")
    cell = row(page, "striped fur").locator("td.text")
    assert cell.inner_text() == XSS  # shown literally: tags and all
    assert cell.locator("script, img").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_without_token_the_page_is_read_only(page, served):
    open_app(page, served, with_token=False, reviewer="carol")
    assert "Read-only" in page.locator("#banner").inner_text()
    page.goto(served[0] + "#/s/snapshot_v2")
    page.wait_for_selector("#descriptions tr.desc")
    assert page.locator("button.act-reject").first.is_disabled()
    status = page.evaluate("""async () => (await fetch('/api/draft/decision', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify({snapshot: 'v2', reviewer: 'carol',
        version: 0, decision: {action: 'reject', class: 'dog', old: 'a wet nose'}})})).status""")
    assert status == 403


def test_review_reject_edit_reload_save_then_diff(page, served, capsys):
    open_app(page, served, reviewer="alice")
    page.goto(served[0] + "#/s/snapshot_v2")
    page.wait_for_selector("#descriptions tr.desc")
    target = row(page, "a wet nose")
    target.locator("button.act-reject").click()
    target.locator("input.comment-input").fill("not visible in a photo")
    target.locator("button.confirm").click()
    page.wait_for_selector("tr.decided-reject")
    edited = row(page, "pointed ears")
    edited.locator("button.act-edit").click()
    edited.locator("textarea.edit-text").fill("tall pointed ears with tufts")
    edited.locator("button.confirm").click()
    page.wait_for_selector("tr.decided-edit")
    assert "2 unsaved decision(s)" in page.locator("#draft-summary").inner_text()

    page.reload()  # the draft lives on the server: nothing is lost
    page.wait_for_selector("tr.decided-edit")
    assert "2 unsaved decision(s)" in page.locator("#draft-summary").inner_text()
    assert "tall pointed ears with tufts" in page.locator("tr.decided-edit ins").inner_text()
    assert "not visible in a photo" in page.locator("tr.decided-reject").inner_text()
    shot(page, "review_draft.png")

    page.click("#save-snapshot")
    saved = page.wait_for_selector("#saved-as")
    assert "snapshot_v3" in saved.inner_text()

    capsys.readouterr()
    assert kbuild_in_process("diff", "v2", "v3", "--json", "--store", served[2]["KBUILD_STORE"]) == 0
    diff = json.loads(capsys.readouterr().out)
    changed = {c["class_name"]: c for c in diff["modified_classes"]}
    assert set(changed) == {"cat", "dog"} and not diff["added_classes"] and not diff["removed_classes"]
    assert changed["dog"]["removed"] == ["a wet nose"] and not changed["dog"]["added"] and not changed["dog"]["reworded"]
    assert changed["dog"]["removal_reasons"] == {"a wet nose": "review: rejected by alice: not visible in a photo"}
    cat = changed["cat"]
    olds = cat["removed"] + [r["old"] for r in cat["reworded"]]
    news = cat["added"] + [r["new"] for r in cat["reworded"]]
    assert olds == ["pointed ears"] and news == ["tall pointed ears with tufts"]
    assert diff["manifest"]["operation"] == {"old": "prune", "new": "review"}
