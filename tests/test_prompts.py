"""Prompt templates: the shipped files, validation of broken ones, rendering, hashing, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kbuild.errors import InputFileError, KbuildError, UsageError
from kbuild.sources.llm.prompts import default_prompts_dir, list_prompts, load_prompt, load_prompt_file, placeholders, substitute

SHIPPED = default_prompts_dir()
MODALITIES = ["chest X-ray", "fundus photograph", "dermoscopy", "brain MRI", "microscopy"]

MINIMAL = '''
name = "mine"
description = "a test template"
system = "You list looks. Braces stay: {{like this}}."
user = "Give {count} looks of {class_name} in {place}."

[variables.class_name]
description = "the class"

[variables.count]
description = "how many"
default = 7

[variables.place]
description = "where"
default = "the wild"

[output]
format = "json_list"
description = "a JSON list of strings"
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_prompts_are_valid_and_distinct():
    prompts, broken = list_prompts()
    assert broken == []
    assert [p.name for p in prompts] == ["contrastive", "general", "medical"]
    assert len({p.hash for p in prompts}) == 3
    for p in prompts:
        assert p.hash.startswith("sha256:") and len(p.hash) == 7 + 64
        assert {"class_name", "count"} <= set(p.variables)
        assert p.output_format == "json_list" and "JSON list" in p.output_description
    medical = load_prompt("medical")
    assert medical.required() == ["class_name", "modality"]
    assert list(medical.variables["modality"].examples) == MODALITIES
    assert load_prompt("contrastive").required() == ["class_name", "siblings"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_medical_prompt_renders_each_modality(modality):
    system, user = load_prompt("medical").render({"class_name": "pneumonia", "count": 12, "modality": modality})
    assert modality in system and modality in user
    assert "12" in user and "pneumonia" in user
    assert "{" not in system + user  # every placeholder filled


def test_contrastive_prompt_names_the_siblings():
    _, user = load_prompt("contrastive").render({"class_name": "melanoma", "siblings": "nevus; keratosis"})
    assert "melanoma" in user and "nevus; keratosis" in user and "50" in user  # count's default


def test_missing_variable_is_one_line_naming_it_and_its_examples():
    with pytest.raises(UsageError) as err:
        load_prompt("medical").render({"class_name": "pneumonia"})
    message = str(err.value)
    assert "\n" not in message
    assert "'modality'" in message and "--modality" in message and "chest X-ray" in message
    with pytest.raises(UsageError, match="needs a value for 'modality'"):
        load_prompt("medical").render({"class_name": "pneumonia", "modality": "  "})


def test_unknown_variable_is_refused():
    with pytest.raises(UsageError, match="Prompt 'general' has no variable 'modality'"):
        load_prompt("general").render({"class_name": "cat", "modality": "dermoscopy"})


def test_substitution_keeps_literal_braces_and_defaults(tmp_path):
    p = load_prompt_file(write(tmp_path, "mine", MINIMAL))
    system, user = p.render({"class_name": "fox"})
    assert system == "You list looks. Braces stay: {like this}."
    assert user == "Give 7 looks of fox in the wild."
    assert substitute("{a}{{b}}", {"a": "x"}) == "x{b}"
    assert placeholders("{a} and {b_2} and {{c}}") == {"a", "b_2"}


def test_hash_ignores_comments_and_layout_but_not_wording(tmp_path):
    base = load_prompt_file(write(tmp_path, "mine", MINIMAL)).hash
    relaid = "# a comment\n" + MINIMAL.replace('default = 7', 'default   =   7   # seven')
    assert load_prompt_file(write(tmp_path, "mine", relaid)).hash == base
    reworded = MINIMAL.replace("You list looks.", "You list appearances.")
    assert load_prompt_file(write(tmp_path, "mine", reworded)).hash != base


@pytest.mark.parametrize("change, expected", [
    (lambda t: t.replace('name = "mine"', 'name = "other"'), "must equal the file name 'mine'"),
    (lambda t: t.replace("{place}", "{plaice}"), "uses {plaice}, which is not declared"),
    (lambda t: t.replace(" in {place}", ""), "variable 'place' is declared but never used"),
    (lambda t: t.replace("{{like this}}", "{like this}"), "is not a variable name"),
    (lambda t: t.replace("{{like this}}", "a } alone"), "stray '}'"),
    (lambda t: t.replace('format = "json_list"', 'format = "yaml"'), "format 'yaml' is not supported"),
    (lambda t: t.replace('description = "a test template"\n', ''), "missing key 'description'"),
    (lambda t: t + '\nauthor = "me"\n', "unknown key 'author'"),
    (lambda t: t.replace('default = 7', 'default = true'), "'default' must be a non-empty string"),
    (lambda t: t.replace("[variables.count]\ndescription = \"how many\"\ndefault = 7\n", "")
               .replace("{count}", "some"), "[variables.count] is missing"),
    (lambda t: t.replace('system = "You', 'system = You'), "not valid TOML"),
    (lambda t: t.replace('system = "You list looks. Braces stay: {{like this}}."', 'system = 3'),
     "'system' in the file must be a non-empty string"),
])
def test_malformed_template_is_one_line_error(tmp_path, change, expected):
    path = write(tmp_path, "mine", change(MINIMAL))
    with pytest.raises(InputFileError) as err:
        load_prompt_file(path)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message and str(path) in message


def test_non_utf8_template_is_refused(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_bytes(MINIMAL.replace("looks", "l\xf6oks").encode("latin-1"))
    with pytest.raises(InputFileError, match="not UTF-8"):
        load_prompt_file(path)


def test_unknown_prompt_lists_what_exists():
    with pytest.raises(UsageError, match=r"Unknown prompt 'nope'. Available: contrastive, general, medical"):
        load_prompt("nope")
    with pytest.raises(UsageError, match="Unknown prompt"):
        load_prompt("..")  # never a path escape
    with pytest.raises(KbuildError, match="does not exist"):
        load_prompt("general", Path("/definitely/not/here"))


def test_prompts_dir_override_and_path_reference(tmp_path):
    write(tmp_path, "mine", MINIMAL)
    good, bad = list_prompts(tmp_path)
    assert [p.name for p in good] == ["mine"] and bad == []
    assert load_prompt("mine", tmp_path).name == "mine"
    assert load_prompt(str(tmp_path / "mine.toml")).name == "mine"
    write(tmp_path, "broken", "name = ")
    good, bad = list_prompts(tmp_path)
    assert [p.name for p in good] == ["mine"] and len(bad) == 1 and "broken.toml" in bad[0]


# ---- CLI ------------------------------------------------------------------------------------------

def test_cli_prompts_list(kbuild):
    result = kbuild("prompts", "list")
    assert result.code == 0, result.err
    assert [line.split()[0] for line in result.out.splitlines() if not line.startswith(" ")] == \
        ["contrastive", "general", "medical"]
    listed = kbuild("prompts", "list", "--json").json()
    assert {p["name"]: p["hash"] for p in listed} == {p.name: p.hash for p in list_prompts()[0]}


def test_cli_prompts_show_and_render(kbuild):
    shown = kbuild("prompts", "show", "medical")
    assert shown.code == 0 and load_prompt("medical").hash in shown.out and "{modality}" in shown.out
    rendered = kbuild("prompts", "show", "medical", "--class", "glaucoma", "--modality", "fundus photograph",
                      "--count", "5", "--json").json()["rendered"]
    assert "fundus photograph" in rendered["system"] and "5" in rendered["user"] and "glaucoma" in rendered["user"]
    missing = kbuild("prompts", "show", "medical", "--class", "glaucoma")
    assert missing.code == 2 and missing.err.count("\n") == 1 and "modality" in missing.err


def test_cli_prompts_errors_are_one_line(kbuild, tmp_path):
    unknown = kbuild("prompts", "show", "nope")
    assert unknown.code == 2 and unknown.err.startswith("Error: Unknown prompt 'nope'")
    write(tmp_path, "bad", MINIMAL.replace('name = "mine"', 'name = "bad"').replace("{place}", "{oops}"))
    broken = kbuild("prompts", "show", "bad", "--prompts-dir", tmp_path)
    assert broken.code == 1 and broken.err.count("\n") == 1 and "{oops}" in broken.err
    listed = kbuild("prompts", "list", "--prompts-dir", tmp_path)
    assert listed.code == 0 and "skipped:" in listed.err and listed.out == ""


def test_shipped_prompt_copy_in_own_folder_keeps_its_hash(tmp_path):
    shutil.copy(SHIPPED / "general.toml", tmp_path / "general.toml")
    assert load_prompt("general", tmp_path).hash == load_prompt("general").hash
    data = json.loads(json.dumps(load_prompt("general").to_json()))
    assert data["variables"][0]["name"] == "class_name" and data["variables"][0]["required"] is True
