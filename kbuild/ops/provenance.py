"""What a snapshot records about how its texts were made (the manifest's ``provenance``).

- ``generated``: the prompt template's name, hash and full text, the LLM model and endpoint host
  (never a key: the host comes from ``public_url``, which drops user:password and query), the
  sampling settings, and a summary of the call log (calls, tokens, cache hits).
- ``loaded``: each source file's name, size and sha256, so a reader can check they hold the same file.
- ``bundle``: a Parquet bundle's file record plus the snapshot it was exported from and that
  snapshot's lineage, which is how the original history survives a trip to another store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def file_record(path: Path | str) -> dict[str, Any]:
    """``{name, sha256, bytes}`` of one source file (read in 1 MiB chunks)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"name": Path(path).name, "sha256": f"sha256:{digest.hexdigest()}", "bytes": size}


def loaded(paths: list[Path]) -> dict[str, Any]:
    return {"kind": "loaded", "files": [file_record(p) for p in paths]}


def generated(prompt, options, client, stats) -> dict[str, Any]:
    """``prompt`` a PromptTemplate, ``options`` GenerateOptions, ``client`` the ChatClient, ``stats`` CallStats."""
    from kbuild.sources.llm.client import url_host

    return {
        "kind": "generated",
        "prompt": {"name": prompt.name, "hash": prompt.hash, "system": prompt.system, "user": prompt.user,
                   "follow_up": prompt.follow_up, "variables": dict(options.variables)},
        "llm": {"model": client.model, "host": url_host(client.base_url)},
        "sampling": {"temperature": client.temperature, "seed": client.seed, "per_class": options.per_class,
                     "max_rounds": options.max_rounds, "max_reasks": options.max_reasks,
                     "min_per_class": options.minimum},
        "calls": {"calls": stats.made, "cache_hits": stats.cached, "errors": stats.errors,
                  "malformed": stats.malformed, "prompt_tokens": stats.prompt_tokens,
                  "completion_tokens": stats.completion_tokens, "estimated_cost_usd": stats.estimated_cost_usd},
    }


def from_bundle(bundle) -> dict[str, Any]:
    """A loaded bundle: its file, and the exported snapshot with its own provenance and lineage."""
    m = bundle.kb.info.manifest
    original = {"snapshot": bundle.kb.info.name, "operation": m.get("operation"), "created": m.get("created"),
                "content_hash": m.get("content_hash"), "parents": m.get("parents", []),
                "parameters": m.get("parameters", {}), "provenance": m.get("provenance"),
                "kbuild_version": m.get("kbuild_version")}
    return {"kind": "bundle", "files": [bundle.file_record()], "original": original, "lineage": bundle.lineage}


def summary_lines(manifest: dict[str, Any]) -> list[str]:
    """A few lines for ``kbuild show``: how this snapshot's texts were made."""
    p = manifest.get("provenance") or {}
    kind = p.get("kind")
    if kind == "generated":
        calls, sampling, prompt = p.get("calls", {}), p.get("sampling", {}), p.get("prompt", {})
        return [f"made by: {p['llm'].get('model')} at {p['llm'].get('host')}, prompt {prompt.get('name')} "
                f"({str(prompt.get('hash'))[:19]}...), temperature {sampling.get('temperature')}, seed {sampling.get('seed')}",
                f"llm calls: {calls.get('calls')} sent, {calls.get('cache_hits')} from the call log, "
                f"{calls.get('prompt_tokens')} prompt + {calls.get('completion_tokens')} completion tokens"]
    if kind in ("loaded", "bundle"):
        lines = [f"source: {f['name']} {f['sha256'][:19]}..." for f in p.get("files", [])]
        if kind == "bundle":
            o = p.get("original", {})
            lines.append(f"exported from: {o.get('snapshot')} ({o.get('operation')}, {str(o.get('created'))[:19]}), "
                         f"lineage of {len(p.get('lineage', []))} ancestor(s)")
            lines.extend("  " + line for line in summary_lines({"provenance": o.get("provenance")}))
        return lines
    return []
