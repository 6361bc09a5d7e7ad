"""A ``local-dir:`` folder loads exactly the weights it names, or refuses; the model id hashes them.

Reproduced before this change: a folder holding ``open_clip_model.pt`` (no ``.safetensors``)
loaded *random* weights, different on every load, while the model id recorded the ``.pt``'s hash.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_CLIP_CONFIG
from kbuild.clip.models import ClipModel, ModelSpec, file_sha256
from kbuild.errors import KbuildError


def _folder_with(tmp_path: Path, tiny_clip_dir: Path, name: str) -> Path:
    """A copy of the tiny model folder whose weights are saved as ``name`` (a torch state dict)."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / name.replace(".", "_")
    folder.mkdir()
    shutil.copy(tiny_clip_dir / "open_clip_config.json", folder)
    torch.save(load_file(str(tiny_clip_dir / "open_clip_model.safetensors")), folder / name)
    return folder


def _encode(folder: Path) -> tuple[np.ndarray, str]:
    model = ClipModel(ModelSpec(f"local-dir:{folder}", None), device="cpu")
    return model.encode_texts(["a photo of a cat", "a dog"]), model.model_id


@pytest.mark.parametrize("name", ["open_clip_model.pt", "open_clip_pytorch_model.bin", "weights.pth"])
def test_a_pt_or_bin_folder_loads_the_same_weights_as_the_safetensors_folder(tmp_path, tiny_clip_dir, name):
    reference, _ = _encode(tiny_clip_dir)
    folder = _folder_with(tmp_path, tiny_clip_dir, name)
    first, model_id = _encode(folder)
    second, _ = _encode(folder)
    np.testing.assert_allclose(first, reference, atol=1e-6)
    np.testing.assert_array_equal(first, second)
    assert model_id.endswith(file_sha256(folder / name)[:16])


def test_a_folder_without_weights_is_refused(tmp_path, tiny_clip_dir):
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(tiny_clip_dir / "open_clip_config.json", folder)
    with pytest.raises(KbuildError, match="no weights file"):
        ClipModel(ModelSpec(f"local-dir:{folder}", None), device="cpu")


def test_two_unnamed_weight_files_are_refused(tmp_path, tiny_clip_dir):
    folder = _folder_with(tmp_path, tiny_clip_dir, "a.pt")
    shutil.copy(folder / "a.pt", folder / "b.bin")
    with pytest.raises(KbuildError, match="several weights files"):
        ClipModel(ModelSpec(f"local-dir:{folder}", None), device="cpu")


class _Payload:
    """Pickled into a .pt: weights_only loading must refuse it rather than run or accept it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_is_not_plain_weights_is_refused(tmp_path, tiny_clip_dir, capsys):
    import torch

    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(tiny_clip_dir / "open_clip_config.json", folder)
    torch.save({"state_dict": _Payload()}, folder / "open_clip_model.pt")
    with pytest.raises(KbuildError, match="cannot load open_clip_model.pt"):
        ClipModel(ModelSpec(f"local-dir:{folder}", None), device="cpu")
    assert "this must never run" not in capsys.readouterr().out


def test_weights_of_another_architecture_are_refused(tmp_path, tiny_clip_dir):
    folder = _folder_with(tmp_path, tiny_clip_dir, "open_clip_model.pt")
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"] = {**TINY_CLIP_CONFIG, "embed_dim": 32}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(KbuildError, match="cannot load"):
        ClipModel(ModelSpec(f"local-dir:{folder}", None), device="cpu")


def test_the_cli_reports_a_folder_without_weights_in_one_line(tmp_path, tiny_clip_dir, kbuild, monkeypatch):
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(tiny_clip_dir / "open_clip_config.json", folder)
    kb = tmp_path / "kb.json"
    kb.write_text(json.dumps({"cat": ["whiskers"]}))
    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "store"))
    result = kbuild("load", kb, "--model", f"local-dir:{folder}")
    assert result.code == 2 and result.err.count("\n") == 1 and "no weights file" in result.err


@pytest.mark.parametrize("other", ["copy", "garbage"])
def test_a_named_pt_beside_another_safetensors_loads_quietly_and_only_the_pt(tmp_path, tiny_clip_dir, capfd, caplog,
                                                                            other):
    """Before (issue 23, item 18): open_clip announced "Using 'other.safetensors'" (and read it) while
    kbuild loaded model.pt; with a broken other file the folder could not be loaded at all."""
    reference, _ = _encode(tiny_clip_dir)
    folder = _folder_with(tmp_path, tiny_clip_dir, "model.pt")
    if other == "copy":
        shutil.copy(tiny_clip_dir / "open_clip_model.safetensors", folder / "other.safetensors")
    else:
        (folder / "other.safetensors").write_bytes(b"not a safetensors file at all")
    capfd.readouterr()
    with caplog.at_level("INFO"):  # open_clip logs on the root logger (to stderr on the command line)
        encoded, model_id = _encode(folder)
    np.testing.assert_allclose(encoded, reference, atol=1e-6)
    assert model_id.endswith(file_sha256(folder / "model.pt")[:16])
    err = capfd.readouterr().err + "\n".join(r.getMessage() for r in caplog.records)
    assert "other.safetensors" not in err, err
