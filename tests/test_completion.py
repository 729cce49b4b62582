"""The bash completion script, run by a real bash on simulated command lines.

Each line is completed twice: by plain bash, and with bash-completion loaded when it is
installed (its _init_completion and _filedir); BASH_COMPLETION_FILE names another copy.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from aggregator.cli import build_parser
from aggregator.completion import script
from tests.conftest import debian_program

BASH = shutil.which("bash")
BASH_COMPLETION = os.environ.get(
    "BASH_COMPLETION_FILE", "/usr/share/bash-completion/bash_completion"
)

Complete = Callable[[str], list[str]]

pytestmark = pytest.mark.skipif(BASH is None, reason="no bash")

# Sets COMP_WORDS as bash splits the line ("--a=b" is "--a" "=" "b"), calls the function
# as `complete -F` does and prints COMPREPLY, one a line.
SIMULATE = r"""
[[ $1 ]] && source "$1"
source "$2"
COMP_LINE=$3 COMP_POINT=${#3} COMP_CWORD=$(($# - 4))
COMP_WORDS=("${@:4}")
_aggregator aggregator "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
((${#COMPREPLY[@]} == 0)) || printf "%s\n" "${COMPREPLY[@]}"
"""


@pytest.fixture(params=["plain", "bash-completion"])
def completer(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[argparse.ArgumentParser], Complete]:
    """completer(parser)("aggregator po"): what bash offers for that line, in tmp_path."""
    helper = ""
    if request.param == "bash-completion":
        if not Path(BASH_COMPLETION).is_file():
            if os.environ.get("CI"):  # .ci/run installs it
                pytest.fail(f"{BASH_COMPLETION} is missing, but .ci/run installs bash-completion")
            pytest.skip(
                "bash-completion is not installed (Debian: apt-get install bash-completion)"
            )
        helper = BASH_COMPLETION
    monkeypatch.chdir(tmp_path)

    def completer(parser: argparse.ArgumentParser) -> Complete:
        path = tmp_path_factory.mktemp("script") / "aggregator.bash"
        path.write_text(script(parser, "bash"))

        def complete(line: str) -> list[str]:
            words = re.findall(r"""(?:\\.|'[^']*'?|"[^"]*"?|\S)+""", line)  # as bash splits it
            words = [part for word in words for part in re.findall(r"[^=:]+|[=:]+", word)]
            words += [""] if line.endswith(" ") and not line.endswith("\\ ") else []
            out = subprocess.run(
                [str(BASH), "--norc", "--noprofile", "-c", SIMULATE, "bash", helper, str(path),
                 line, *words],
                capture_output=True, text=True, check=True, timeout=30,
            )  # fmt: skip
            assert out.stderr == ""
            return out.stdout.splitlines()

        return complete

    return completer


@pytest.fixture
def complete(completer: Callable[[argparse.ArgumentParser], Complete]) -> Complete:
    """complete("aggregator po"): what bash offers for that line, in tmp_path."""
    return completer(build_parser())


def test_script_is_valid_bash(tmp_path: Path) -> None:
    path = tmp_path / "aggregator.bash"
    path.write_text(script(build_parser(), "bash"))
    subprocess.run([str(BASH), "-n", str(path)], check=True)


def test_commands(complete: Complete) -> None:
    assert complete("aggregator po") == ["poll"]
    assert "import-opml" in complete("aggregator ")
    assert complete("aggregator --v") == ["--version"]


def test_options(complete: Complete) -> None:
    assert complete("aggregator poll --lo") == ["--log-format"]
    assert "--config" in complete("aggregator check -")


def test_choices(complete: Complete) -> None:
    assert complete("aggregator poll --log-format ") == ["text", "json"]
    assert complete("aggregator poll -v --log-format j") == ["json"]
    assert complete("aggregator poll --log-format=j") == ["json"]
    assert complete("aggregator poll --log-format=") == ["text", "json"]


def test_files(complete: Complete, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    (tmp_path / "feeds.yaml").touch()
    (tmp_path / "media").mkdir()
    if request.node.callspec.params["completer"] == "plain":  # bash-completion 2.11's
        assert sorted(complete("aggregator check -c ")) == ["feeds.yaml", "media"]  # needs readline
    assert complete("aggregator check -c fe") == ["feeds.yaml"]
    assert complete("aggregator check --config=fe") == ["feeds.yaml"]
    assert complete("aggregator import-opml f") == ["feeds.yaml"]
    assert complete("aggregator demo --feeds m") == ["media"]
    assert complete("aggregator demo --feeds f") == []


def test_feed_names(complete: Complete, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feed names come from `aggregator feeds --names`, with the -c given before."""
    stub = tmp_path / "bin" / "aggregator"
    stub.parent.mkdir()
    stub.write_text(
        '#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\n'
        "printf '%s\\n' 'BBC World' Lobsters https://lobste.rs/rss\n"
    )
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    assert complete("aggregator remove ") == ["BBC\\ World", "Lobsters", "https://lobste.rs/rss"]
    assert (stub.parent / "args").read_text() == "feeds --names\n"
    assert complete("aggregator remove -c my.yaml Lo") == ["Lobsters"]
    assert (stub.parent / "args").read_text() == "feeds --names --config my.yaml\n"
    assert complete("aggregator refresh -c ~/my.yaml Lo") == ["Lobsters"]
    home = os.environ["HOME"]
    assert (stub.parent / "args").read_text() == f"feeds --names --config {home}/my.yaml\n"
    assert complete("aggregator remove BBC\\ W") == ["BBC\\ World"]
    assert complete("aggregator remove 'BBC W") == ["BBC World"]  # readline quotes it
    assert complete("aggregator remove https://lob") == ["//lobste.rs/rss"]  # after the ":"
    assert complete("aggregator remove Lobsters ") == []  # remove takes one feed
    assert complete("aggregator poll -q Lobsters BB") == ["BBC\\ World"]  # poll takes many


def test_other_parsers(completer: Callable[[argparse.ArgumentParser], Complete]) -> None:
    """Choices of a positional (`help TOPIC`) quoted; hidden commands left out."""
    parser = argparse.ArgumentParser(prog="aggregator")
    commands = parser.add_subparsers()
    topics = ["feeds.yaml", "cron jobs", "it's"]
    commands.add_parser("help", help="a topic").add_argument("topic", choices=topics)
    commands.add_parser("feeds", help=argparse.SUPPRESS).add_argument("--names")
    complete = completer(parser)
    assert complete("aggregator ") == ["help"]
    assert complete("aggregator help ") == ["feeds.yaml", "cron\\ jobs", "it\\'s"]
    assert complete("aggregator help 'cr") == ["cron jobs"]
    assert complete("aggregator help cron\\ ") == ["cron\\ jobs"]


def test_fish_completes_commands_options_and_values(tmp_path: Path) -> None:
    fish = debian_program("fish", "fish")
    path = tmp_path / "aggregator.fish"
    path.write_text(script(build_parser(), "fish"))
    assert subprocess.run([fish, "--no-execute", str(path)], check=False).returncode == 0

    def complete(line: str) -> list[str]:
        run = subprocess.run(
            [fish, "--no-config", "-c", f"source {path}; complete -C {line!r}"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return [row.split("\t")[0] for row in run.stdout.splitlines()]

    assert complete("aggregator po") == ["poll"]
    assert complete("aggregator poll --log-format ") == ["json", "text"]
    assert "refresh" in complete("aggregator re") and "reindex" in complete("aggregator re")
    assert "--json" in complete("aggregator status --")


def test_zsh_reads_and_registers_the_script(tmp_path: Path) -> None:
    zsh = debian_program("zsh", "zsh")
    path = tmp_path / "_aggregator"
    path.write_text(script(build_parser(), "zsh"))
    assert subprocess.run([zsh, "-n", str(path)], check=False).returncode == 0
    run = subprocess.run(
        [zsh, "-f", "-c", f"autoload -U compinit; compinit -u -D; source {path};"
                          " print -r -- ${_comps[aggregator]}"],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "_aggregator"  # the completion function of the command
