"""The sandbox's template seeds (seed.py): the shipped templates, JSON and TOML files, and their errors."""

from __future__ import annotations

import json

import pytest

from omnichannel import ConfigError
from omnichannel_whatsapp.sandbox.seed import load_templates, normalize_templates
from omnichannel_whatsapp.templates import parse_template

# ---------------------------------------------------------------- seed files


def test_the_shipped_templates():
    templates = load_templates(None)

    keys = {(t["name"], t["language"]): t for t in templates}
    assert {"order_update", "welcome", "appointment_reminder", "hello_world"} <= {name for name, _ in keys}
    assert ("order_update", "pt_BR") in keys
    assert keys["welcome", "en_US"]["parameter_format"] == "NAMED"
    assert {t["status"] for t in templates} >= {"APPROVED", "PAUSED", "REJECTED", "DISABLED"}
    assert all(t["id"].isdigit() for t in templates)
    assert len({t["id"] for t in templates}) == len(templates)
    assert list(templates[0])[:7] == [
        "id",
        "name",
        "language",
        "status",
        "category",
        "parameter_format",
        "components",
    ]
    for template in templates:
        parse_template(template)  # the plugin reads every one
    assert load_templates(None) == templates
    assert load_templates(None) is not templates


def test_a_json_seed_completes_ids_and_formats(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            [
                {"name": "greet", "language": "en", "components": [{"type": "body", "text": "Hi {{name}}"}]},
                {
                    "name": "greet",
                    "language": "de",
                    "status": "paused",
                    "components": [{"type": "BODY", "text": "Hallo"}],
                },
            ]
        )
    )

    first, second = load_templates(str(path))

    assert first["id"].isdigit()
    assert len(first["id"]) == 16
    assert first["id"] != second["id"]
    assert first["parameter_format"] == "NAMED"
    assert first["status"] == "APPROVED"
    assert first["category"] == "UTILITY"
    assert first["components"] == [{"type": "BODY", "text": "Hi {{name}}"}]
    assert second["status"] == "PAUSED"
    assert load_templates(str(path))[0]["id"] == first["id"]


def test_a_toml_seed(tmp_path):
    path = tmp_path / "templates.toml"
    path.write_text(
        """
[[templates]]
id = 42
name = "order_update"
language = "en_US"
category = "utility"

[[templates.components]]
type = "HEADER"
format = "TEXT"
text = "Order {{1}}"

[[templates.components]]
type = "BODY"
text = "Hi {{1}}, your order {{2}} ships {{3}}."

[[templates.components]]
type = "BUTTONS"
buttons = [{type = "URL", text = "Track", url = "https://shop.example/track/{{1}}"}]
"""
    )

    (template,) = load_templates(str(path))

    assert template["id"] == "42"
    assert template["category"] == "UTILITY"
    assert template["parameter_format"] == "POSITIONAL"
    assert template["components"][2]["buttons"][0]["type"] == "URL"


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        (
            "t.json",
            "{not json",
            "templates file: not JSON: Expecting property name enclosed in double quotes",
        ),
        ("t.toml", "[[templates]\n", "templates file: not TOML"),
        ("t.yaml", "templates: []", "templates file: must end in .json or .toml, got '.yaml'"),
        ("t.json", '{"other": []}', "templates: missing"),
        ("t.json", '{"templates": {}}', "templates: must be a list of templates, got a table"),
        ("t.json", "[1]", "templates[0]: must be a table (object), got a number"),
        (
            "t.json",
            '[{"name": "Bad Name", "language": "english", "components": []}]',
            "templates[0].name: only lowercase letters, digits and '_' (at most 512), got 'Bad Name'",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "status": "LIVE",'
            ' "components": [{"type": "BODY", "text": "a"}]}]',
            "templates[0].status: must be one of APPROVED",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "components": [{"type": "FOOTER", "text": "a"}]}]',
            "templates[0].components: a BODY is required",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "components": [{"type": "BODY", "text": "{{1}} and {{3}}"}]}]',
            "templates[0].components[0].text: variables must be {{1}} to {{2}}, got [1, 3]",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "parameter_format": "POSITIONAL",'
            ' "components": [{"type": "BODY", "text": "Hi {{name}}"}]}]',
            "templates[0].components: a POSITIONAL template uses {{1}}, {{2}}..., got {{name}}",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "components": [{"type": "BODY", "text": "a"},'
            ' {"type": "BUTTONS", "buttons": [{"type": "URL", "url": "https://x/{{1}}/y"}]}]}]',
            "templates[0].components[1].buttons[0].url: at most one variable, at the end of the URL",
        ),
        (
            "t.json",
            '[{"name": "x", "language": "en", "components": [{"type": "BODY", "text": "a"}]},'
            ' {"name": "x", "language": "en", "components": [{"type": "BODY", "text": "b"}]}]',
            "templates[1]: 'x' in en is already templates[0] (a template is keyed by name and language)",
        ),
    ],
)
def test_malformed_seeds_are_config_errors_naming_the_file(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(ConfigError) as info:
        load_templates(str(path))

    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert any(line.startswith(problem) for line in info.value.errors), info.value.errors


def test_every_problem_of_a_seed_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        normalize_templates(
            [
                {"name": "a", "language": "en"},
                {
                    "name": "b",
                    "language": "en",
                    "category": "PROMO",
                    "components": [{"type": "BODY", "text": "x"}],
                },
            ],
            source="seed.json",
        )

    assert info.value.errors == [
        "templates[0].components: required, a non-empty list (at least a BODY)",
        "templates[1].category: must be one of AUTHENTICATION, MARKETING, UTILITY, got 'PROMO'",
    ]


def test_a_missing_seed_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_templates(str(tmp_path / "missing.json"))
