"""The documentation is tested: its example plugin, its links, its code blocks and its quotations.

Conventions in docs/**/*.md (see docs/index.md, "Conventions"):

* ``<!-- test -->`` before a fenced ``python`` block: the block runs as a module;
  then every zero-argument ``test_*`` function it defines is called (awaited
  when it is a coroutine function).
* ``<!-- test-module: NAME -->`` before a ``python`` block: the block is saved as
  ``NAME.py`` in a directory on ``sys.path`` while the file's later blocks run.
* ``<!-- quote: PATH -->`` before a fenced block: the block is copied from PATH
  (relative to the markdown file) and must appear there verbatim.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import omnichannel
from omnichannel import (
    Certainty,
    Message,
    MessageSent,
    OmniChannelService,
    PluginSettings,
    SenderUnavailableError,
    ServiceConfig,
    Template,
    Text,
    load_config,
)
from omnichannel.plugins import get_plugin_manager
from omnichannel.testing import ChannelPluginConformance, EventRecorder, make_service

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLE = DOCS / "examples" / "omnichannel-postcard"
MARKDOWN = sorted(DOCS.rglob("*.md"))


def _load_example() -> types.ModuleType:
    """Import the example plugin from docs/examples under a name of its own.

    Not as ``omnichannel_postcard``: that name is kept for the installed copy,
    which test_example_installs_and_is_discovered imports through its entry point.
    """
    name = "docs_example_omnichannel_postcard"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / "omnichannel_postcard" / "__init__.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


postcard = _load_example()

ADDRESS = "Ann Smith, 1 Main Street, Springfield"


# ---------------------------------------------------------------- the example plugin


@pytest.fixture
def installed_example(tmp_path):
    """Install docs/examples/omnichannel-postcard into a directory and put it on sys.path."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    saved_path = list(sys.path)
    saved_module = sys.modules.pop("omnichannel_postcard", None)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path[:] = saved_path
        sys.modules.pop("omnichannel_postcard", None)
        if saved_module is not None:
            sys.modules["omnichannel_postcard"] = saved_module
        importlib.invalidate_caches()


async def test_example_installs_and_is_discovered(installed_example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pm = get_plugin_manager()
    assert pm.has_plugin("postcard"), pm.load_errors
    assert pm.distributions["postcard"][1] == "0.1.0"
    plugin = pm.get_plugin("postcard")
    assert Path(plugin.__file__).is_relative_to(installed_example)

    outbox = tmp_path / "outbox"
    config = load_config(environ={}, overrides={"plugins": {"postcard": {"outbox": str(outbox)}}})
    events = EventRecorder()
    async with OmniChannelService(config, plugins=[events], environ={}) as service:
        assert service.channel_owner("postcard") == "postcard"
        receipt = await service.send(Message(ADDRESS, Text("Greetings from Lisbon"), channel="postcard"))
    assert receipt.ok
    assert receipt.channel == "postcard"
    written = outbox / receipt.provider_message_id
    assert written.read_text(encoding="utf-8").count("Greetings from Lisbon") == 1
    assert [e.receipt for e in events.of_type(MessageSent)] == [receipt]


class TestPostcardConformance(ChannelPluginConformance):
    channel = "postcard"

    @pytest.fixture(autouse=True)
    def _outbox(self, tmp_path):
        self.outbox = tmp_path / "outbox"

    def make_plugin(self):
        return postcard

    def service_config(self):
        # The suite registers the plugin as "plugin-under-test": its section has that name.
        settings = {"outbox": str(self.outbox), "max_chars": 40}
        return ServiceConfig(plugins={"plugin-under-test": PluginSettings(settings=settings)})

    def valid_messages(self):
        # Fixed ids: the suite calls this more than once and compares ids.
        return [
            Message(ADDRESS, Text("Greetings from Lisbon"), channel="postcard", id="card-1"),
            Message(ADDRESS, Text("x" * 40), channel="postcard", id="card-2"),
        ]

    def invalid_messages(self):
        return [
            Message(ADDRESS, Text("x" * 41), channel="postcard"),
            Message(ADDRESS, Template("welcome"), channel="postcard"),
            Message("", Text("to nobody"), channel="postcard"),
        ]


async def test_example_unwritable_outbox_is_a_sender_error(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = ServiceConfig(plugins={"postcard": PluginSettings(settings={"outbox": str(blocker)})})
    message = Message(ADDRESS, Text("hi"), channel="postcard")
    async with make_service(("postcard", postcard), config=config) as service:
        with pytest.raises(SenderUnavailableError) as info:
            await service.send(message)
    assert info.value.channel == "postcard"
    assert info.value.message_id == message.id
    assert info.value.certainty is Certainty.NOT_SENT
    assert "cannot write to the outbox" in str(info.value)


def test_example_reads_its_legacy_variable(tmp_path):
    service = make_service(("postcard", postcard), environ={"POSTCARD_OUTBOX": str(tmp_path)})
    assert service.plugin_config(postcard.PostcardConfig).outbox == str(tmp_path)


# ---------------------------------------------------------------- markdown


_FENCE = re.compile(r"^(```+|~~~+)([^\n]*)\n(.*?)^\1[ \t]*$", re.DOTALL | re.MULTILINE)
_MARKER = re.compile(r"<!--\s*(test|test-module:\s*[\w.]+|quote:\s*\S+)\s*-->\s*\n\s*\Z")
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")


def _blocks(path: Path) -> list[tuple[str, str, str]]:
    """(marker, language, code) of every fenced block in ``path``; marker is '' when absent."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        marker = _MARKER.search(text, 0, match.start())
        found.append((marker.group(1) if marker else "", match.group(2).strip(), match.group(3)))
    return found


def _prose(path: Path) -> str:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return _INLINE_CODE.sub("", text)


def _relative_links() -> list[tuple[Path, str]]:
    links = []
    for path in MARKDOWN:
        for target in _LINK.findall(_prose(path)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            links.append((path, target))
    return links


def test_docs_exist():
    names = {p.relative_to(DOCS).as_posix() for p in MARKDOWN}
    for wanted in (
        "index.md",
        "quickstart.md",
        "plugins/hooks.md",
        "plugins/writing.md",
        "ops/circuit-breaker-runbook.md",
        "ops/deployment.md",
    ):
        assert wanted in names


@pytest.mark.parametrize(
    ("page", "target"),
    [pytest.param(p, t, id=f"{p.relative_to(DOCS)}:{t}") for p, t in _relative_links()],
)
def test_relative_link_exists(page, target):
    resolved = (page.parent / target.split("#", 1)[0]).resolve()
    assert resolved.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def _quoted_blocks() -> list[tuple[Path, str, str]]:
    return [
        (path, marker.split(":", 1)[1].strip(), code)
        for path in MARKDOWN
        for marker, _, code in _blocks(path)
        if marker.startswith("quote:")
    ]


@pytest.mark.parametrize(
    ("page", "source", "code"),
    [pytest.param(*q, id=f"{q[0].relative_to(DOCS)}:{q[1]}:{i}") for i, q in enumerate(_quoted_blocks())],
)
def test_quoted_block_is_verbatim(page, source, code):
    text = (page.parent / source).read_text(encoding="utf-8")
    assert code in text, f"a block in {page.relative_to(ROOT)} no longer matches {source}"


def _runnable_pages() -> list[Path]:
    return [p for p in MARKDOWN if any(m == "test" for m, _, _ in _blocks(p))]


def _run_module(name: str, code: str, filename: str) -> None:
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    try:
        exec(compile(code, filename, "exec"), module.__dict__)
        for attr, value in list(module.__dict__.items()):
            if attr.startswith("test_") and inspect.isfunction(value):
                if inspect.signature(value).parameters:
                    continue
                result = value()
                if inspect.iscoroutine(result):
                    asyncio.run(result)
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("page", [pytest.param(p, id=str(p.relative_to(DOCS))) for p in _runnable_pages()])
def test_runnable_blocks(page, tmp_path, monkeypatch):
    for var in [v for v in os.environ if v.startswith("OMNICHANNEL_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    modules = tmp_path / "_modules"
    modules.mkdir()
    monkeypatch.syspath_prepend(str(modules))
    written: list[str] = []
    try:
        for i, (marker, language, code) in enumerate(_blocks(page)):
            if language != "python":
                continue
            where = f"{page.relative_to(ROOT)}[block {i}]"
            if marker.startswith("test-module:"):
                name = marker.split(":", 1)[1].strip()
                (modules / f"{name}.py").write_text(code, encoding="utf-8")
                importlib.invalidate_caches()
                written.append(name)
            elif marker == "test":
                _run_module(f"docs_block_{i}", code, where)
    finally:
        for name in written:
            sys.modules.pop(name, None)


def test_quickstart_has_runnable_blocks():
    assert sum(1 for m, lang, _ in _blocks(DOCS / "quickstart.md") if m == "test" and lang == "python") >= 2


# ---------------------------------------------------------------- hooks reference


def test_every_hook_has_a_section_in_hooks_md():
    text = (DOCS / "plugins" / "hooks.md").read_text(encoding="utf-8")
    pm = get_plugin_manager(load_entrypoints=False)
    for name, caller in vars(pm.hook).items():
        if name.startswith("_"):
            continue
        args = ", ".join(caller.spec.argnames)
        assert f"(plugin-hook-{name})=\n## {name}({args})\n" in text, name


def test_public_names_mentioned_in_docs_exist():
    """``omnichannel.X`` references in the docs name things that exist."""
    missing = set()
    for path in MARKDOWN:
        for name in re.findall(r"\bomnichannel\.([A-Za-z_]\w*)\b", path.read_text(encoding="utf-8")):
            if name == "toml":  # the configuration file, omnichannel.toml
                continue
            if not hasattr(omnichannel, name) and importlib.util.find_spec(f"omnichannel.{name}") is None:
                missing.add(f"{path.relative_to(DOCS)}: omnichannel.{name}")
    assert not missing
