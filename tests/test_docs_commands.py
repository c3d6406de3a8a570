"""Every command in README.md and docs/*.md is composed here as written, so a doc cannot give a command that fails on
its options: `python -m embed_lm.<hydra entry> ...` is composed by Hydra from conf/ (a multirun's first value of
each sweep), a plain entry point parses its arguments with its own parser, `make <target> VAR=...` is dry-run and the
python commands it would run are composed the same way, and `pip install '.[extra]'` names extras that pyproject
declares. Placeholders such as `<run>` are kept as values; `...` and `[optional]` words are dropped.

    python -m pytest -q tests/test_docs_commands.py
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HYDRA_ENTRIES = {"embed_lm.train": "train", "embed_lm.evaluate": "evaluate", "embed_lm.mine": "mine",
                 "embed_lm.passkey": "passkey", "embed_lm.plan": "plan", "embed_lm.synth": "synth"}
HYDRA_FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--info"}
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd"}
SHELL_WORDS = re.compile(r"^(python|make|pip|bash|source|\.)\b")


def doc_commands() -> list[tuple[str, str]]:
    """(where, command) for every shell command in a fenced code block of the README and docs."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for block in re.finditer(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, re.S):
            lineno = text[: block.start()].count("\n") + 2
            body = block[1].replace("\\\n", " ")
            for i, line in enumerate(body.splitlines()):
                line = re.sub(r"\s+#.*$", "", line.strip().removeprefix("$ "))
                for command in re.split(r"\s*(?:&&|;)\s*", line):
                    command = re.sub(r"^(\w+=\S*\s+)+", "", command)  # DS_BUILD_OPS=0 pip ...
                    if SHELL_WORDS.match(command) and not command.startswith("python -c"):
                        found.append((f"{path.relative_to(ROOT)}:{lineno + i}", command))
    return found


def words(command: str) -> list[str]:
    command = re.sub(r"<[^<>\n]*>", "PLACEHOLDER", command)  # <run>, <eval dir of ...>
    return [w for w in shlex.split(command) if w != "..." and not (w.startswith("[") and w.endswith("]"))]


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """The overrides of the first job of a multirun (`a=x,y` -> `a=x`; `a=glob(*)` -> the group's first option)."""
    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if not o.is_sweep_override():
            out.append(o.input_line)
            continue
        if isinstance(o.value(), Glob):  # over a config group's options
            group = ROOT / "conf" / o.key_or_group.replace(".", "/")
            value = o.value().filter(sorted(p.stem for p in group.glob("*.yaml")))[0]
        else:
            value = next(iter(o.sweep_string_iterator()))
        out.append(f"{o.get_key_element()}={value}")
    return out


def compose_hydra(config_name: str, argv: list[str]) -> None:
    overrides, skip = [], False
    for w in argv:
        if skip:
            skip = False
        elif w in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif w not in HYDRA_FLAGS:
            overrides.append(w)
    overrides = first_of_sweeps(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


class Parsed(Exception):
    pass


def parse_plain(module: str, argv: list[str], monkeypatch) -> None:
    """Run the module's main(argv) up to its argument parsing: the parse must succeed (argparse exits 2 otherwise)."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    main = importlib.import_module(module).main
    with pytest.raises(Parsed):
        main(argv)


def check_python(argv: list[str], monkeypatch) -> None:
    if argv[:1] != ["-m"]:  # a script: it must exist
        assert (ROOT / argv[0]).is_file(), f"{argv[0]} does not exist"
        return
    module, rest = argv[1], argv[2:]
    if module in HYDRA_ENTRIES:
        compose_hydra(HYDRA_ENTRIES[module], rest)
    else:
        parse_plain(module, rest, monkeypatch)


def make_dry_run(argv: list[str]) -> list[list[str]]:
    """What `make -n <argv>` would run with python, as the words after `python` (`-m embed_lm...` or a script)."""
    out = subprocess.run(["make", "-n", "-C", str(ROOT), *argv], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"make -n {' '.join(argv)}: {out.stderr.strip()}"
    commands = []
    for line in out.stdout.replace("\\\n", " ").splitlines():
        for command in re.split(r"\s*(?:&&|;)\s*", line):
            ws = shlex.split(command) if command.strip() else []
            if len(ws) < 2 or not ws[0].endswith("python"):
                continue
            if ws[1] == "-m" and ws[2].startswith("embed_lm") or ws[1].endswith(".py"):
                commands.append(ws[1:])
    return commands


def check_pip(argv: list[str]) -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for w in argv:
        m = re.search(r"\.\[([\w,-]+)\]", w)
        if m:
            assert set(m[1].split(",")) <= extras, f"{w}: extras must be among {sorted(extras)}"


COMMANDS = doc_commands()


def test_the_docs_hold_commands():
    assert len(COMMANDS) > 40 and any(c.startswith("make demo") for _, c in COMMANDS)


@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_doc_command_composes(where, command, monkeypatch):
    argv = words(command)
    if argv[0] == "python":
        check_python(argv[1:], monkeypatch)
    elif argv[0] == "make":
        for python_argv in make_dry_run(argv[1:]):
            check_python(python_argv, monkeypatch)
    elif argv[0] == "pip":
        check_pip(argv[1:])
    else:  # bash <script> / source <file>
        assert (ROOT / argv[1]).exists(), f"{where}: {argv[1]} does not exist"


def test_a_wrong_option_fails_here(monkeypatch):
    """The check can fail: a misspelt group, a key missing its `+`, a plain entry's unknown flag."""
    with pytest.raises(Exception, match="backbon"):
        check_python(words("-m embed_lm.train backbon=llama2"), monkeypatch)
    with pytest.raises(Exception, match="no_such_key"):
        check_python(words("-m embed_lm.train data.no_such_key=1"), monkeypatch)
    with pytest.raises(SystemExit):
        check_python(words("-m embed_lm.encode run=x --no-such-flag"), monkeypatch)
