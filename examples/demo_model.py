"""Pick the CLIP model for the demo and print it as shell assignments for ``eval``.

Pretrained CLIP is used when open_clip can fetch it or finds it in the local cache
(``KPL_CLIP_MODEL`` / ``KPL_CLIP_PRETRAINED`` override the demo's ViT-B-32 / openai). Without a
network or cache, a tiny random-weight model is built instead so the workflow still runs; its
accuracies mean nothing, and the demo says so. Diagnostics go to stderr, assignments to stdout.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path

DEMO_MODEL, DEMO_PRETRAINED = "ViT-B-32", "openai"


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _try_pretrained(model: str, pretrained: str) -> str | None:
    """None when the model loads, else the one-line reason."""
    if not _hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # only the local cache can help now: fail fast, no retries
    from kbuild.clip.models import load_clip
    from kbuild.errors import KbuildError

    try:
        load_clip(model, pretrained)
        return None
    except KbuildError as err:
        return str(err)


def _tiny(folder: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import build_tiny_clip_dir  # the same tiny model the tests use

    if not (folder / "open_clip_config.json").is_file():
        build_tiny_clip_dir(folder)
    return f"local-dir:{folder}"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo_out")
    model = os.environ.get("KPL_CLIP_MODEL") or DEMO_MODEL
    pretrained = os.environ.get("KPL_CLIP_PRETRAINED") or DEMO_PRETRAINED
    if model.startswith("local-dir:") or model.startswith("hf-hub:"):
        pretrained = "none"
    reason = _try_pretrained(model, pretrained or None)
    meaningful = reason is None
    if reason is not None:
        print(f"demo: pretrained CLIP {model}/{pretrained} could not be fetched or found (offline?); "
              "running the same workflow with a tiny random model: its accuracies are meaningless.", file=sys.stderr)
        model, pretrained = _tiny(out / "tiny_clip"), "none"
    print(f"export KPL_CLIP_MODEL={shlex.quote(model)} KPL_CLIP_PRETRAINED={shlex.quote(pretrained)} "
          f"DEMO_MEANINGFUL={'1' if meaningful else '0'}")


if __name__ == "__main__":
    main()
