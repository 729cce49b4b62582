"""Shell completion scripts for bash, zsh and fish, generated from the argparse parser.

The scripts list every command, option and choice, so completing them starts no Python.
Only a feed name or URL asks the program: `aggregator feeds --names`, passing along the
`-c/--config` given earlier on the line.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

FEEDS = "feeds --names"  # prints the feed names, then their URLs, one a line
CONFIG = "--config"  # the option whose value is passed along to FEEDS


@dataclass
class Arg:
    flags: list[str]  # empty for a positional argument
    help: str
    metavar: str
    kind: str  # flag (takes no value), value, file, dir, choices, feed or command
    choices: list[str] = field(default_factory=list)
    many: bool = False  # a positional that repeats, an option that may be given again
    final: bool = False  # --help, --version: nothing follows


@dataclass
class Command:
    name: str
    help: str
    args: list[Arg]
    commands: list[Command] = field(default_factory=list)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` (bash, zsh or fish) of `parser`'s program."""
    generate = {"bash": _bash, "zsh": _zsh, "fish": _fish}.get(shell)
    if generate is None:
        raise ValueError(f"no completion for {shell!r}: bash, zsh or fish")
    fn = "_" + re.sub(r"\W", "_", parser.prog)
    return generate(_command(parser), parser.prog, fn)


def _command(parser: argparse.ArgumentParser, name: str = "", about: str = "") -> Command:
    formatter, command = parser._get_formatter(), Command(name, about, [])
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            command.commands = [
                _command(sub, sub_name, _oneline(helps.get(sub_name)))
                for sub_name, sub in action.choices.items()
                if helps.get(sub_name, argparse.SUPPRESS) != argparse.SUPPRESS  # unlisted
            ]
            names = [c.name for c in command.commands]
            command.args.append(Arg([], "", "COMMAND", "command", names))
            continue
        metavar = action.metavar or action.dest.upper()
        metavar = metavar if isinstance(metavar, str) else " ".join(metavar)
        if action.nargs == 0:
            kind = "flag"
        elif action.choices is not None:
            kind = "choices"
        elif not action.option_strings and re.search("FEED|NAME", metavar.upper()):
            kind = "feed"
        elif metavar == "DIR":
            kind = "dir"
        elif action.type is Path or isinstance(action.type, argparse.FileType):
            kind = "file"
        else:
            kind = "file" if metavar == "FILE" else "value"
        many = action.nargs in ("*", "+", argparse.REMAINDER) if not action.option_strings else (
            isinstance(action, argparse._AppendAction | argparse._CountAction)
        )  # fmt: skip
        about = _oneline(formatter._expand_help(action) if action.help else "")
        final = isinstance(action, argparse._HelpAction | argparse._VersionAction)
        choices = [str(c) for c in action.choices or ()]
        flags = list(action.option_strings)
        command.args.append(Arg(flags, about, metavar, kind, choices, many, final))
    return command


def _oneline(text: str | None) -> str:
    return " ".join((text or "").split())


def _commands(top: Command) -> list[Command]:
    return [top, *top.commands]


def _fill(template: str, top: Command, prog: str, fn: str, bar: str, **parts: str) -> str:
    """`template` with @prog@, @fn@ (the function names' prefix), @feeds@, @config@, @flags@
    (those of the config option, joined by `bar`) and the other @parts@ filled in."""
    flags = {f for c in _commands(top) for a in c.args if CONFIG in a.flags for f in a.flags}
    parts |= {"prog": prog, "fn": fn, "feeds": FEEDS, "config": CONFIG}
    parts["flags"] = bar.join(sorted(flags) or [CONFIG])
    for key, text in parts.items():
        template = template.replace(f"@{key}@", text)
    return template


# bash ---------------------------------------------------------------------------------


def _bash(top: Command, prog: str, fn: str) -> str:
    def case(pattern: list[str], code: str) -> str:
        return f"        {' | '.join(shlex.quote(p) for p in pattern)}) {code} ;;\n"

    def complete(arg: Arg) -> str:
        words = " ".join(shlex.quote(c) for c in arg.choices)
        return {"file": f"{fn}_files", "dir": f"{fn}_files -d", "feed": f"{fn}_feeds"}.get(
            arg.kind, f"{fn}_match {words}" if arg.choices else ""
        )

    valued = values = options = positionals = ""
    for cmd in _commands(top):
        flags = [shlex.quote(f) for a in cmd.args for f in a.flags]
        options += case([cmd.name], " ".join([f"{fn}_match", *flags]))
        takes = [arg for arg in cmd.args if arg.flags and arg.kind != "flag"]
        if takes:
            valued += case([f"{cmd.name} {f}" for a in takes for f in a.flags], "return 0")
        for arg in takes:
            if complete(arg):
                values += case([f"{cmd.name} {f}" for f in arg.flags], complete(arg))
        tests = [
            f"(($2 {'>=' if a.many else '=='} {i})); then {complete(a)}"
            for i, a in enumerate(g for g in cmd.args if not g.flags)
            if complete(a)
        ]
        if tests:
            positionals += case([cmd.name], "if " + "; elif ".join(tests) + "; fi")
    return _fill(
        _BASH,
        top,
        prog,
        fn,
        " | ",
        valued=valued,
        values=values,
        options=options,
        positionals=positionals,
        command="        elif [[ ! $cmd ]]; then\n            cmd=$w\n" if top.commands else "",
    )


_BASH = r"""# bash completion for @prog@, generated from its argparse parser

@fn@() {
    local cur prev words cword split=false
    COMPREPLY=()
    if declare -F _init_completion >/dev/null; then
        _init_completion -s -n : || return
    else
        @fn@_init
    fi
    local i w cmd="" n=0 skip="" ended=""
    for ((i = 1; i < cword; i++)); do  # find the command, count its positional arguments
        w=${words[i]}
        if [[ $skip ]]; then
            skip=""
        elif [[ ! $ended && $w == -* ]]; then
            [[ $w == -- ]] && ended=1
            @fn@_takes_value "$cmd" "$w" && skip=1
@command@        else
            n=$((n + 1))
        fi
    done
    if [[ $skip || $split == true ]]; then
        @fn@_value "$cmd" "$prev"
    elif [[ ! $ended && $cur == -* ]]; then
        @fn@_options "$cmd"
    else
        @fn@_positional "$cmd" "$n"
    fi
    if [[ $cur == *:* && $COMP_WORDBREAKS == *:* ]]; then  # bash replaces what follows the :
        w=${cur%"${cur##*:}"}
        COMPREPLY=("${COMPREPLY[@]#"$w"}")
    fi
}

@fn@_init() {  # without bash-completion: what `_init_completion -s -n :` sets
    local i w
    words=() cword=0
    for ((i = 0; i < ${#COMP_WORDS[@]}; i++)); do  # join "--opt" "=" "value", "https" ":" "//x"
        w=${COMP_WORDS[i]}
        if ((i > 0)) && [[ $w == [:=]* || ${COMP_WORDS[i - 1]} == *[:=] ]]; then
            words[${#words[@]} - 1]+=$w
        else
            words+=("$w")
        fi
        ((i == COMP_CWORD)) && cword=$((${#words[@]} - 1))
    done
    cur=${words[cword]-} prev=${words[cword - 1]-}
    if [[ $cur == --*=* ]]; then
        prev=${cur%%=*} cur=${cur#*=} split=true
    fi
}

@fn@_takes_value() {  # does option $2 of command $1 take a value?
    case "$1 $2" in
@valued@    esac
    return 1
}

@fn@_value() {  # complete the value of option $2 of command $1
    case "$1 $2" in
@values@    esac
}

@fn@_options() {  # complete the options of command $1
    case $1 in
@options@    esac
}

@fn@_positional() {  # complete positional argument $2 (from 0) of command $1
    case $1 in
@positionals@    esac
}

@fn@_match() {  # those of the words that start with $cur, quoted for the command line
    local w typed=${cur//\\/} format=%q
    if [[ $typed == [\"\']* ]]; then  # in an open quote: readline quotes as for file names
        typed=${typed:1} format=%s
        compopt -o filenames 2>/dev/null
    fi
    for w; do
        [[ $w == "$typed"* ]] && printf -v w "$format" "$w" && COMPREPLY+=("$w")
    done
    return 0
}

@fn@_files() {  # files, or folders with -d
    if declare -F _filedir >/dev/null; then
        _filedir "$@"
        return
    fi
    compopt -o filenames 2>/dev/null
    local w
    while IFS= read -r w; do COMPREPLY+=("$w"); done < <(compgen "${1:--f}" -- "$cur")
}

@fn@_feeds() {  # the feed names and URLs, from `@prog@ @feeds@`
    local i w config=() feeds=()
    for ((i = 1; i < cword; i++)); do
        w=${words[i]}
        case $w in
            @flags@) config=(@config@ "${words[i + 1]/#\~/$HOME}") ;;
            @config@=*) config=(@config@ "${w#*=}") ;;
        esac
    done
    mapfile -t feeds < <(@prog@ @feeds@ "${config[@]}" 2>/dev/null)
    @fn@_match "${feeds[@]}"
}

complete -F @fn@ @prog@
"""


# zsh ----------------------------------------------------------------------------------


def _zsh(top: Command, prog: str, fn: str) -> str:
    def esc(text: str) -> str:  # an option's [description], a _describe item's name:description
        return re.sub(r"([\\\[\]:])", r"\\\1", text)

    def action(arg: Arg) -> str:
        words = " ".join(re.sub(r"([^\w.,+/@%=-])", r"\\\1", c) for c in arg.choices)
        return {"file": "_files", "dir": "_files -/", "feed": f"{fn}_feeds"}.get(
            arg.kind, f"({words})" if arg.choices else " "
        )

    def specs(cmd: Command) -> str:
        lines, position = [], 0
        for arg in cmd.args:
            message = arg.metavar.replace(":", "\\:")
            value = "" if arg.kind == "flag" else f":{message}:{action(arg)}"
            if arg.kind == "command":
                lines += [f"{position + 1}: :->command", "*:: :->argument"]
            elif arg.flags:
                excl = "(- *)" if arg.final else "*" if arg.many else f"({' '.join(arg.flags)})"
                about = f"[{esc(arg.help)}]" if arg.help else ""
                for flag in arg.flags:
                    takes = "" if arg.kind == "flag" else "=" if flag.startswith("--") else "+"
                    lines.append(f"{excl}{flag}{takes}{about}{value}")
            else:
                position += 1
                lines.append(f"{'*' if arg.many else position}{value}")
        return " \\\n".join(["_arguments -s -S", *map(shlex.quote, lines)]) + " && ret=0"

    return _fill(
        _ZSH,
        top,
        prog,
        fn,
        "|",
        main=specs(top).replace("\n", "\n  "),
        items="".join(
            f"\n    {shlex.quote(esc(c.name) + ':' + esc(c.help))}" for c in top.commands
        ),
        cases="".join(
            f"\n    ({shlex.quote(c.name)})\n      " + specs(c).replace("\n", "\n      ") + " ;;"
            for c in top.commands
        ),
    )


_ZSH = r"""#compdef @prog@
# zsh completion for @prog@, generated from its argparse parser

@fn@() {
  local curcontext=$curcontext state state_descr line ret=1
  local -a commands
  typeset -A opt_args
  @main@
  case $state in
  (command)
    commands=(@items@
    )
    _describe -t commands command commands && ret=0
    ;;
  (argument)
    curcontext=${curcontext%:*:*}:@prog@-$words[1]:
    case $words[1] in@cases@
    esac
    ;;
  esac
  return ret
}

@fn@_feeds() {  # the feed names and URLs, from `@prog@ @feeds@`
  local i
  local -a config feeds expl
  for ((i = 1; i < CURRENT; i++)); do
    case $words[i] in
      (@flags@) config=(@config@ ${${(Q)words[i+1]}/#\~/$HOME}) ;;
      (@config@=*) config=(@config@ ${${(Q)words[i]#*=}/#\~/$HOME}) ;;
    esac
  done
  feeds=(${${(f)"$(@prog@ @feeds@ "${config[@]}" 2>/dev/null)"}:#})
  _wanted feeds expl feed compadd -a feeds
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  @fn@ "$@"
else
  compdef @fn@ @prog@
fi
"""


# fish ---------------------------------------------------------------------------------


def _fish(top: Command, prog: str, fn: str) -> str:
    def quote(text: str) -> str:
        if re.fullmatch(r"[\w.,+/@%=:-]+", text):
            return text
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def complete(condition: str, arg: Arg) -> str:
        words = " ".join(quote(c) for c in arg.choices)
        line = f"complete -c {prog} -n {quote(condition)}"
        for flag in arg.flags:
            line += f" -l {flag[2:]}" if flag.startswith("--") else f" -s {flag[1:]}"
        takes = "-x " if arg.flags and arg.kind != "flag" else ""
        line += {
            "file": " -r -F" if arg.flags else " -F",
            "dir": f" {takes}-a '(__fish_complete_directories)'",
            "feed": f" {takes}-a '({fn}_feeds)'",
        }.get(arg.kind, f" {takes}-a {quote(words)}" if arg.choices else f" {takes}".rstrip())
        return line + (f" -d {quote(arg.help)}" if arg.help else "") + "\n"

    lines = f"complete -c {prog} -f\n"
    for cmd in _commands(top):
        cond = f"__fish_seen_subcommand_from {cmd.name}" if cmd.name else "__fish_use_subcommand"
        for arg in cmd.args:
            if arg.kind != "command" and (arg.flags or arg.kind != "value"):
                lines += complete(cond, arg)
    for cmd in top.commands:
        lines += complete("__fish_use_subcommand", Arg([], cmd.help, "", "", [cmd.name]))
    return _fill(_FISH, top, prog, fn, " ") + lines


_FISH = r"""# fish completion for @prog@, generated from its argparse parser

function @fn@_feeds --description 'the feed names and URLs, from `@prog@ @feeds@`'
    set -l config
    set -l next
    for token in (commandline -opc)
        test "$next" = config; and set config @config@ $token
        set next
        switch $token
            case @flags@
                set next config
            case '@config@=*'
                set config @config@ (string replace -r '^[^=]*=' '' -- $token)
        end
    end
    @prog@ @feeds@ (string replace -r '^~' $HOME -- $config) 2>/dev/null
end

"""
