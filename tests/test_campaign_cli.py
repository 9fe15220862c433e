"""``omnichannel campaign send`` through click's CliRunner, on the console channel."""

from __future__ import annotations

import csv
import importlib.metadata
import re

import pytest
from click.testing import CliRunner

from omnichannel.campaigns import cli as campaign_cli
from omnichannel.cli import cli
from omnichannel.idempotency import MemoryKeyStore

pytestmark = pytest.mark.usefixtures("isolated_env")

OTHER_PLUGINS = sorted(
    ep.name for ep in importlib.metadata.entry_points(group="omnichannel") if ep.name != "console"
)

CONFIG = '[plugins.console]\nstream = "stderr"\n'
"""Console lines go to stderr: stdout holds the progress and the summary alone."""


@pytest.fixture
def shared_keys(monkeypatch):
    """One MemoryKeyStore for every invocation of the test (a re-run sees the first run's keys)."""
    store = MemoryKeyStore()
    opened = []

    def open_store(url, clock):
        opened.append(url)
        return store

    monkeypatch.setattr(campaign_cli, "open_key_store", open_store)
    store.opened = opened
    return store


@pytest.fixture
def run(tmp_path):
    def run(*args, config=CONFIG):
        path = tmp_path / "omnichannel.toml"
        path.write_text(config, encoding="utf-8")
        prefix = ["--config", str(path)]
        prefix += [arg for name in OTHER_PLUGINS for arg in ("--disable-plugin", name)]
        return CliRunner().invoke(cli, [*prefix, "campaign", "send", *args], prog_name="omnichannel")

    return run


@pytest.fixture
def recipients(tmp_path):
    path = tmp_path / "spring.csv"
    path.write_text(
        "recipient,first_name\n+15550001,Ann\n+15550002,Bob\n+15550003\n+15550004,Di\n", encoding="utf-8"
    )
    return str(path)


def report_lines(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def campaign_id_of(output):
    match = re.search(r"campaign id: (\S+), run it again with the same id to resume", output)
    assert match, output
    return match.group(1)


def test_send_a_text_campaign(run, recipients, shared_keys, tmp_path):
    result = run(recipients, "--channel", "console", "--text", "Hi {first_name}")
    assert result.exit_code == 0, result.output
    assert sorted(result.stderr.splitlines()) == [
        "[console] to +15550001: Hi Ann",
        "[console] to +15550002: Hi Bob",
        "[console] to +15550004: Hi Di",
    ]
    campaign_id = campaign_id_of(result.stdout)
    assert campaign_id.startswith("spring-")
    assert "4 rows in " in result.stdout
    assert re.search(r"^  sent +3$", result.stdout, re.MULTILINE)
    assert re.search(r"^  invalid +1$", result.stdout, re.MULTILINE)
    report = tmp_path / f"{campaign_id}-report.csv"  # the working directory is tmp_path
    assert f"report: ./{campaign_id}-report.csv (1 row not sent, with the reason)" in result.stdout
    assert report_lines(report) == [
        {
            "line": "4",
            "recipient": "",
            "outcome": "invalid",
            "error": "invalid_row",
            "code": "",
            "detail": "expected 2 columns, found 1",
        }
    ]
    assert shared_keys.opened == ["sqlite:///omnichannel-keys.sqlite3"]


def test_a_rerun_resumes_with_the_same_default_id(run, recipients, shared_keys):
    first = run(recipients, "--channel", "console", "--text", "Hi {first_name}")
    second = run(recipients, "--channel", "console", "--text", "Hi {first_name}")
    assert second.exit_code == 0, second.output
    assert campaign_id_of(first.stdout) == campaign_id_of(second.stdout)
    assert second.stderr == ""  # nothing sent again
    assert re.search(r"^  already_sent +3$", second.stdout, re.MULTILINE)
    other = run(recipients, "--channel", "console", "--text", "Hi {first_name}", "--campaign-id", "new")
    assert "campaign id: new," in other.stdout
    assert len(other.stderr.splitlines()) == 3


def test_template_campaign_from_jsonl_with_a_report_path(run, tmp_path, shared_keys):
    source = tmp_path / "people.jsonl"
    source.write_text(
        '{"phone": "+1", "1": "Ann", "2": "42"}\n{"phone": "+2", "1": "Bob"}\nnot json\n', encoding="utf-8"
    )
    report = tmp_path / "out" / "report.csv"
    report.parent.mkdir()
    args = ["--template", "order", "--positional", "--param-column", "1", "--param-column", "2"]
    result = run(str(source), "--channel", "console", *args, "--report", str(report))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == ["[console] to +1: template order (en_US) [Ann, 42]"]
    assert [(line["line"], line["detail"]) for line in report_lines(report)] == [
        ("2", "parameter column '2' is missing"),
        ("3", "invalid JSON: Expecting value: line 1 column 1 (char 0)"),
    ]


def test_dry_run_sends_nothing_and_opens_no_key_store(run, recipients, shared_keys, tmp_path):
    result = run(recipients, "--channel", "console", "--text", "Hi {first_name}", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "dry run: nothing was claimed or sent" in result.stdout
    assert re.search(r"^  valid +3$", result.stdout, re.MULTILINE)
    assert shared_keys.opened == []
    assert not (tmp_path / "omnichannel-keys.sqlite3").exists()


def test_plain_progress_lines_when_not_a_terminal(run, tmp_path, shared_keys, monkeypatch):
    monkeypatch.setattr(campaign_cli, "PLAIN_EVERY_ROWS", 2)
    monkeypatch.setattr(campaign_cli, "PLAIN_EVERY_S", 3600.0)
    source = tmp_path / "five.csv"
    source.write_text("to\n" + "".join(f"+{i}\n" for i in range(5)), encoding="utf-8")
    result = run(str(source), "--channel", "console", "--text", "hi", "--concurrency", "1")
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stdout.splitlines() if line.startswith("progress:")]
    assert [re.sub(r" \(.*\)$", "", line) for line in progress] == [
        "progress: 2 rows, sent 2",
        "progress: 4 rows, sent 4",
    ]


def test_rich_progress_on_a_terminal(run, recipients, shared_keys, monkeypatch):
    monkeypatch.setattr(campaign_cli, "_use_rich", lambda: True)
    result = run(recipients, "--channel", "console", "--text", "Hi {first_name}")
    assert result.exit_code == 0, result.output
    assert "progress:" not in result.stdout
    assert "campaign id: spring-" in result.stdout
    assert re.search(r"sent\s+│\s+3", result.stdout), result.stdout


def test_failures_are_reported_and_exit_zero(run, tmp_path, shared_keys):
    source = tmp_path / "r.csv"
    source.write_text("recipient\n+1\n", encoding="utf-8")
    result = run(str(source), "--channel", "nope", "--text", "hi")
    assert result.exit_code == 0, result.output
    (line,) = report_lines(tmp_path / f"{campaign_id_of(result.stdout)}-report.csv")
    assert line["outcome"] == "invalid"
    assert "'nope'" in line["detail"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --text or --template"),
        (["--text", "a", "--template", "t"], "give exactly one of --text or --template"),
        (["--text", "Hi {0}"], "text placeholders must name a column"),
        (["--text", "a", "--named"], "go with --template"),
        (["--template", "t", "--concurrency", "0"], "0 is not in the range x>=1"),
    ],
)
def test_usage_errors_exit_2(run, recipients, args, message):
    result = run(recipients, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_a_missing_file_is_a_usage_error(run, tmp_path):
    result = run(str(tmp_path / "nope.csv"), "--text", "hi")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_a_file_without_recipient_column_cannot_start(run, tmp_path, shared_keys):
    source = tmp_path / "r.csv"
    source.write_text("name\nAnn\n", encoding="utf-8")
    result = run(str(source), "--channel", "console", "--text", "hi")
    assert result.exit_code == 1
    assert "Error: the CSV header has no 'recipient' column" in result.stderr
    assert "run it again" not in result.stderr


def test_a_bad_key_store_cannot_start(run, recipients):
    result = run(
        recipients, "--channel", "console", "--text", "hi", config='key_store = "ftp://x"\n' + CONFIG
    )
    assert result.exit_code == 1, result.output
    assert "Error: " in result.stderr
    assert "key_store: 'ftp://x' is not a key store URL" in result.stderr
    assert "Traceback" not in result.output


def test_a_key_store_failure_stops_the_campaign_with_exit_1(run, recipients, monkeypatch):
    from omnichannel import KeyStoreError

    class Down(MemoryKeyStore):
        async def claim(self, key, **kwargs):
            raise KeyStoreError("the key store is unreachable")

    monkeypatch.setattr(campaign_cli, "open_key_store", lambda url, clock: Down())
    result = run(recipients, "--channel", "console", "--text", "hi")
    assert result.exit_code == 1, result.output
    assert "Error: the key store is unreachable" in result.stderr
    assert "the campaign stopped; campaign id: spring-" in result.stderr


def test_with_the_sqlite_key_store_a_rerun_sends_nothing(run, recipients, tmp_path):
    config = f'key_store = "sqlite:///{tmp_path}/keys.sqlite3"\n' + CONFIG
    first = run(recipients, "--channel", "console", "--text", "Hi {first_name}", config=config)
    assert first.exit_code == 0, first.output
    assert len(first.stderr.splitlines()) == 3
    second = run(recipients, "--channel", "console", "--text", "Hi {first_name}", config=config)
    assert second.exit_code == 0, second.output
    assert second.stderr == ""
    assert re.search(r"^  already_sent +3$", second.stdout, re.MULTILINE)


def test_help_explains_resuming(run):
    result = CliRunner().invoke(cli, ["campaign", "send", "--help"])
    assert result.exit_code == 0
    assert "resumes" in result.stdout
    assert "--resend-uncertain" in result.stdout
