"""Options shared by several commands, defined once so their help never drifts."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kbuild import settings

StoreOpt = Annotated[Optional[str], typer.Option(
    "--store", envvar=settings.ENV_STORE, show_envvar=True,
    help=f"Folder of the embedded store and of kbuild's caches \\[default: ./{settings.DEFAULT_STORE}].")]
ChromaUrlOpt = Annotated[Optional[str], typer.Option(
    "--chroma-url", envvar=settings.ENV_CHROMA_URL, show_envvar=True,
    help="Use a Chroma server (e.g. http://127.0.0.1:8000) instead of the embedded store; "
         f"a token, if the server needs one, comes from {settings.ENV_CHROMA_TOKEN}.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", envvar=settings.ENV_CLIP_MODEL, show_envvar=True,
    help="CLIP model: an open_clip name, local-dir:PATH, hf-hub:ORG/REPO, transformers:ID_OR_DIR "
         "or a name from 'kpl models' (biomedclip, monet, plip, ...) "
         f"\\[default: {settings.DEFAULT_CLIP_MODEL}].")]
PretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", envvar=settings.ENV_CLIP_PRETRAINED, show_envvar=True,
    help=f"Pretrained tag or checkpoint file (.pt/.safetensors) \\[default: {settings.DEFAULT_CLIP_PRETRAINED}].")]
TemplateOpt = Annotated[str, typer.Option(
    "--template", help="Text template for stored embeddings: class name, then description.")]
NameOpt = Annotated[Optional[str], typer.Option(
    "--name", help="Name of the new snapshot \\[default: the next snapshot_vN].")]
# Commands that work on an existing snapshot re-use its own model unless told otherwise.
SnapshotModelOpt = Annotated[Optional[str], typer.Option(
    "--model", envvar=settings.ENV_CLIP_MODEL, show_envvar=True,
    help="CLIP model for new embeddings \\[default: the snapshot's own model].")]
SnapshotPretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", envvar=settings.ENV_CLIP_PRETRAINED, show_envvar=True,
    help="Pretrained tag or checkpoint file \\[default: the snapshot's own].")]
