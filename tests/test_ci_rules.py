"""Under CI=true a skipped test is a failure (tests/conftest.py), except tests marked ``gpu``; and
missing shared test data fails instead of skipping. Each case runs a child pytest."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO, cli_env

# Each case starts a child pytest (seconds): not in the edit loop.
pytestmark = pytest.mark.slow


def child_pytest(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = cli_env(**env)
    if "CI" not in env:
        environment.pop("CI", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", *args],
                          capture_output=True, text=True, env=environment, cwd=REPO, timeout=300)


def summary(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.strip().splitlines()[-1]


def test_locally_a_skip_is_a_skip():
    proc = child_pytest("tests/ci_probes.py")
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in summary(proc)


def test_under_ci_a_skip_fails_unless_marked_gpu():
    proc = child_pytest("tests/ci_probes.py", CI="true")
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed" in summary(proc)
    assert "FAILED tests/ci_probes.py::test_plain_skip" in proc.stdout
    assert "skipped under CI=true" in proc.stdout and "probe: a plain skip" in proc.stdout


def test_under_ci_a_module_skipped_at_import_fails():
    proc = child_pytest("tests/ci_probes.py", CI="true", KPL_CI_PROBE="module")
    assert proc.returncode != 0, proc.stdout
    assert "module skipped under CI=true" in proc.stdout and "kpl_probe_module_that_does_not_exist" in proc.stdout


def test_missing_shared_data_skips_locally_and_fails_under_ci(tmp_path):
    one = "tests/test_curated.py::test_labo_raw_has_7_classes_and_one_in_class_duplicate"
    missing = str(tmp_path / "no_shared_here")
    local = child_pytest(one, KPL_TEST_SHARED=missing)
    assert local.returncode == 0 and "1 skipped" in summary(local), local.stdout
    ci = child_pytest(one, KPL_TEST_SHARED=missing, CI="true")
    assert ci.returncode == 1 and summary(ci).startswith("1 error"), ci.stdout  # fails in the fixture
    assert "CI needs shared test data" in ci.stdout and missing in ci.stdout


# ---- .ci/install-chromium (run by `make test`) ----------------------------------------------------

def install_chromium(tmp_path, *, tools: dict[str, str], ci: bool) -> subprocess.CompletedProcess:
    """Run the script with PATH holding only ``tools`` (name -> shell body, BIN = their folder): no real
    apt-get runs, and ``id`` says who we are."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in tools.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body.replace("BIN", str(bin_dir)) + "\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": str(bin_dir), **({"CI": "true"} if ci else {})}
    return subprocess.run(["/bin/bash", str(REPO / ".ci" / "install-chromium")], capture_output=True, text=True,
                          env=env, timeout=60)


def test_install_chromium_is_silent_when_chromium_is_there(tmp_path):
    proc = install_chromium(tmp_path, tools={"chromium": "exit 0", "apt-get": "echo apt-get ran >&2; exit 9"}, ci=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_install_chromium_without_root_fails_under_ci_and_notes_locally(tmp_path):
    tools = {"id": "echo 1000", "apt-get": "echo apt-get ran >&2; exit 9"}
    ci = install_chromium(tmp_path / "ci", tools=tools, ci=True)
    assert ci.returncode == 1 and ci.stderr.startswith("Error: Chromium is not installed") and "apt-get ran" not in ci.stderr
    local = install_chromium(tmp_path / "local", tools=tools, ci=False)
    assert local.returncode == 0 and "browser tests will skip" in local.stderr


def test_install_chromium_as_root_updates_then_installs(tmp_path):
    log = tmp_path / "apt.log"
    # The fake apt-get records its arguments and "installs" chromium by creating it next to itself.
    apt_get = (f'echo "$@" >> {log}; '
               'if [ "$1" = install ]; then echo "#!/bin/sh" > BIN/chromium; /bin/chmod +x BIN/chromium; fi')
    tools = {"id": "echo 0", "apt-get": apt_get}
    proc = install_chromium(tmp_path, tools=tools, ci=True)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == ["update -qq", "install -y -qq chromium"]
