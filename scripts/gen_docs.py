#!/usr/bin/env python3
"""Write kmscli's shell completions and man page from its Typer command tree.

    .venv/bin/python scripts/gen_docs.py           write completions/kmscli.{bash,zsh,fish} and man/kmscli.1
    .venv/bin/python scripts/gen_docs.py --check   write nothing; exit 1 naming each committed file that differs

Commands, options, arguments and their help come from the tree that
``typer.main.get_command(kmscli.cli.app.app)`` builds, so a new command or
option reaches every output by running this script again; ``tests/docs`` fails
while a committed file is stale. What the tree cannot say is kept here, each in
one table that a test holds against the code: the environment variables (every
``KMSCLI_*`` name in ``kmscli/``), the exit codes (``kmscli/errors.py``), and
the examples (each ``kmscli ...`` in them must be a command of the tree).

How a value is completed is read from the parameter: a Typer path type or a
metavar naming a file (PATH, FILE, IN, OUT) completes file names; a choice type
or a metavar listing values (``AES_256|AES_128``) completes those values; KEY,
and the NAME of a command other than ``create``, complete the vault's alias
names, asked of ``kmscli alias list`` only when the vault opens without a
prompt. The completion scripts are static: a TAB never imports Python.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROG = "kmscli"
REGENERATE = ".venv/bin/python scripts/gen_docs.py"

#: Every environment variable kmscli reads, in the order the man page lists
#: them. tests/docs checks the KMSCLI_ names against ``grep -r 'KMSCLI_[A-Z_]*'
#: kmscli/`` in both directions: add a line here when the code reads a new one.
ENVIRONMENT: dict[str, str] = {
    "KMSCLI_VAULT": "The vault file, when --vault is not given.",
    "KMSCLI_AUDIT_LOG": "The audit log, when --audit-log is not given.",
    "KMSCLI_REGION": (
        "The region keys are made in and looked up in, when --region is not given; default local. AWS_REGION "
        "is not read: it is the AWS tools' setting."
    ),
    "KMSCLI_ENDPOINT": (
        "A remote KMS to use instead of the vault, when --endpoint is not given: an http(s) URL (another "
        "host's 'kmscli serve') or aws (AWS KMS), with the AWS credential and region chain. Such calls never "
        "go to a session's agent."
    ),
    "KMSCLI_AUDIT_MAX_SIZE": (
        "How large the live audit file grows before the log goes on in a new file: a byte count, or a number "
        "with K, M or G (binary units), at least 1K; default 64M."
    ),
    "KMSCLI_SESSION": (
        "A session made by 'kmscli unlock'; the first passphrase source. While it is set, commands use it and "
        "never fall back to a passphrase: a session that is forged, expired, locked or made for another vault "
        "is exit 5."
    ),
    "KMSCLI_PASSPHRASE_FILE": (
        "A file whose first line is the vault passphrase, when --passphrase-file is not given; the second "
        "source. init reads the new vault's passphrase from it too."
    ),
    "KMSCLI_PASSPHRASE": (
        "The vault passphrase itself; the third source, after which kmscli asks on the terminal. Visible to "
        "other processes of the same user: prefer a session or a passphrase file."
    ),
    "KMSCLI_NEW_PASSPHRASE_FILE": "passwd: a file whose first line is the new passphrase, when --new-passphrase-file "
    "is not given.",
    "KMSCLI_NEW_PASSPHRASE": "passwd: the new passphrase itself, when no new-passphrase file is given.",
    "KMSCLI_RUNTIME_DIR": (
        "The private folder (0700, yours) for the sockets of the session agents that 'kmscli unlock' starts; "
        "default: the user runtime folder ($XDG_RUNTIME_DIR/kmscli on Linux)."
    ),
    "KMSCLI_KDF_SLOTS": (
        "How many key derivations (Argon2id runs) of yours may run at once; the others wait for a turn. "
        "Default: as many as fit in the available memory, at most one per CPU."
    ),
    "NO_COLOR": "When set, nothing is coloured, even on a terminal.",
    "VISUAL": (
        "The editor kmscli edit runs, split into words as a shell splits them (EDITOR='code --wait'); "
        "then EDITOR, then vi."
    ),
    "EDITOR": "The editor kmscli edit runs when VISUAL is unset or empty.",
}

#: What each exit code means (SPEC "Exit codes"); the exception names under each
#: come from kmscli/errors.py, whose EXIT_* codes a test holds against this.
EXIT_MEANINGS: dict[int, str] = {
    0: "Success.",
    1: "Unexpected internal error: one line on stderr, a traceback only with --debug; also kmscli edit "
       "when the editor failed or was quit with an error (nothing is written).",
    2: "Usage or validation error, including a malformed policy document and a rotation limit.",
    3: "Key or alias not found.",
    4: "Key in the wrong state (disabled, pending deletion or import), or an expired import token.",
    5: "Cannot unlock: wrong passphrase, expired or invalid session, no passphrase source and no terminal.",
    6: "Ciphertext invalid, tampered with, truncated, made under another key or with another encryption context; "
       "also wrapped key material that does not unwrap, other key material, or an invalid import token.",
    7: "Denied by the key policy.",
    8: "Vault or audit file missing, unreadable, corrupt or unsafe (another user could write it or its folder); "
       "an audit log that fails verification, was cut or rolled back, or a vault older than its log.",
    9: "Already exists.",
    10: "Remote KMS (--endpoint) unreachable, or it refused the credentials; reserved for remote mode, which "
        "this version does not have yet.",
}
#: Codes that ``kmscli.cli.app.run`` returns besides those of the errors.
EXIT_OTHER: dict[int, str] = {
    130: "Interrupted (Ctrl-C).",
    141: "Standard output was closed early (a broken pipe, as in kmscli ... | head).",
}

#: (what it shows, command lines). An example is printed only when every
#: command it runs is in the tree, so examples of commands still being written
#: appear by themselves when those commands land. A line ending in a backslash
#: goes on in the next; lines fit an 80-column man page.
EXAMPLES: list[tuple[str, list[str]]] = [
    (
        "Create a vault (asks twice for its passphrase), a key with an alias, and make a round trip:",
        [
            "kmscli init",
            "kmscli keys create --alias alias/app --description 'app secrets'",
            "echo hello | kmscli encrypt -k alias/app --armor | kmscli decrypt",
        ],
    ),
    (
        "Unlock once for this shell, so that later calls run no key derivation; lock again when done:",
        [
            'eval "$(kmscli unlock --ttl 1h)"',
            "kmscli lock",
        ],
    ),
    (
        "Encrypt a file bound to an encryption context; decrypting needs the same pairs:",
        [
            "kmscli encrypt --key alias/app --context env=prod \\",
            "    -i config.json -o config.json.kms",
            "kmscli decrypt --context env=prod -i config.json.kms -o config.json",
        ],
    ),
    (
        "In a script without a terminal, take the passphrase from a file:",
        [
            "export KMSCLI_PASSPHRASE_FILE=/run/secrets/kms",
            "kmscli encrypt --key alias/app < backup.tar > backup.tar.kms",
        ],
    ),
    (
        "Make a data key for encrypting elsewhere and keep only its encrypted copy:",
        [
            "kmscli datakey alias/app --json | jq -r .CiphertextBlob > key.b64",
        ],
    ),
    (
        "Edit an encrypted file in place: the editor gets a private copy in memory, and the file is "
        "encrypted again under its own key and context:",
        [
            "EDITOR='code --wait' kmscli edit config.yaml.kms",
        ],
    ),
    (
        "Move a ciphertext to another key without showing the plaintext:",
        [
            "kmscli reencrypt --key alias/new -i secret.kms -o secret.new.kms",
        ],
    ),
    (
        "Rotate a key yearly, list its material, and schedule its deletion:",
        [
            "kmscli keys rotation alias/app --enable --days 365",
            "kmscli keys rotations alias/app --json",
            "kmscli keys schedule-delete alias/app --days 7",
        ],
    ),
    (
        "Replace a key policy, print 32 random bytes as hex, and check the audit log:",
        [
            "kmscli policy put alias/app policy.json",
            "kmscli random 32 --format hex",
            "kmscli audit show --since 2h --key alias/app",
            "kmscli audit verify",
        ],
    ),
]

#: Metavars whose value is a file name ('-' for stdin or stdout is typed by hand).
FILE_METAVARS = {"PATH", "FILE", "IN", "OUT", "FILENAME"}
DIR_METAVARS = {"DIR", "DIRECTORY", "FOLDER"}
#: A metavar that lists the values themselves, such as ``AES_256|AES_128``.
CHOICES_METAVAR = re.compile(r"^[A-Za-z0-9_.+-]+(?:\|[A-Za-z0-9_.+-]+)+$")
#: Metavars for values of a type but without a metavar of their own.
TYPE_METAVARS = {"str": "TEXT", "text": "TEXT", "int": "N", "integer": "N", "float": "NUMBER"}
#: Options whose value is passed on to ``kmscli alias list`` for alias completion.
VAULT_OPTIONS = ("--vault", "--audit-log", "--passphrase-file")
#: Seconds an alias lookup may take before TAB gives up on it.
ALIAS_TIMEOUT_S = 3


# -- the command tree ----------------------------------------------------------


@dataclass
class Param:
    """One option or argument, with what its value completes to."""

    names: tuple[str, ...]  # options: every spelling; arguments: ()
    metavar: str  # '' for a flag
    help: str
    is_option: bool
    takes_value: bool
    repeatable: bool  # an option given many times, or an argument of many words
    required: bool
    kind: str  # file, dir, alias, choice or none
    choices: tuple[str, ...] = ()
    envvar: tuple[str, ...] = ()
    is_help: bool = False
    is_global: bool = False  # also an option of the root command, accepted on every command

    @property
    def label(self) -> str:
        return ", ".join(self.names) if self.is_option else self.metavar


@dataclass
class Command:
    path: tuple[str, ...]  # () for kmscli itself
    help: str
    params: list[Param]
    commands: list[Command] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " ".join((PROG, *self.path))

    @property
    def options(self) -> list[Param]:
        return [p for p in self.params if p.is_option]

    @property
    def arguments(self) -> list[Param]:
        return [p for p in self.params if not p.is_option]

    def walk(self) -> Iterator[Command]:
        yield self
        for c in self.commands:
            yield from c.walk()

    def find(self, path: tuple[str, ...]) -> Command | None:
        node: Command | None = self
        for word in path:
            node = next((c for c in node.commands if c.path[-1] == word), None) if node else None
        return node


def click_tree() -> Any:
    """The click command that kmscli runs (a group)."""
    import typer.main

    from kmscli.cli.app import app

    return typer.main.get_command(app)


def _value_kind(param: Any, metavar: str, command_name: str) -> tuple[str, tuple[str, ...]]:
    ptype = param.type
    choices = getattr(ptype, "choices", None)
    if choices:
        return "choice", tuple(str(getattr(c, "value", c)) for c in choices)
    type_name = getattr(ptype, "name", "")
    words = set(metavar.strip("[]").rstrip(".").split("|"))
    if type_name == "directory" or words & DIR_METAVARS:
        return "dir", ()
    if type_name in ("path", "file", "filename") or words & FILE_METAVARS:
        return "file", ()
    if CHOICES_METAVAR.match(metavar):
        return "choice", tuple(metavar.split("|"))
    if metavar == "KEY" or (metavar == "NAME" and command_name != "create"):
        return "alias", ()
    return "none", ()


def _param(param: Any, ctx: Any, command_name: str, help_option: Any) -> Param:
    is_option = getattr(param, "param_type_name", "") == "option"
    is_flag = bool(getattr(param, "is_flag", False))
    takes_value = not (is_option and (is_flag or getattr(param, "count", False)))
    metavar = param.metavar or ""
    if not metavar and takes_value:
        ptype = param.type
        choices = getattr(ptype, "choices", None)
        metavar = "|".join(map(str, choices)) if choices else TYPE_METAVARS.get(ptype.name, ptype.name.upper())
        if not is_option:
            metavar = param.name.upper()
    nargs = getattr(param, "nargs", 1)
    kind, choices = _value_kind(param, metavar, command_name) if takes_value else ("none", ())
    names = tuple(param.opts) + tuple(param.secondary_opts) if is_option else ()
    if param is help_option:  # click makes it from a set: take the order of the context's list
        names = tuple(n for n in ctx.help_option_names if n in names)
    envvar = getattr(param, "envvar", None) or ()
    return Param(
        names=names,
        metavar=metavar if takes_value else "",
        help=" ".join((getattr(param, "help", None) or "").split()),
        is_option=is_option,
        takes_value=takes_value,
        repeatable=bool(getattr(param, "multiple", False)) or nargs == -1,
        required=bool(param.required),
        kind=kind,
        choices=choices,
        envvar=(envvar,) if isinstance(envvar, str) else tuple(envvar),
        is_help=param is help_option,
    )


def build(click_cmd: Any, path: tuple[str, ...] = (), parent_ctx: Any = None) -> Command:
    """The kmscli model of a click command and everything under it."""
    settings = dict(getattr(click_cmd, "context_settings", None) or {})
    ctx = click_cmd.context_class(
        click_cmd,
        info_name=path[-1] if path else PROG,
        parent=parent_ctx,
        **settings,
    )
    help_option = click_cmd.get_help_option(ctx)
    name = path[-1] if path else PROG
    params = [_param(p, ctx, name, help_option) for p in click_cmd.get_params(ctx)]
    cmd = Command(path=path, help=(getattr(click_cmd, "help", None) or "").strip(), params=params)
    for sub_name, sub in (getattr(click_cmd, "commands", None) or {}).items():
        if not getattr(sub, "hidden", False):
            cmd.commands.append(build(sub, (*path, sub_name), ctx))
    if not path:
        root_options = {p.names for p in cmd.options if not p.is_help}
        for c in cmd.walk():
            for p in c.options:
                p.is_global = bool(c.path) and p.names in root_options
    return cmd


def tree() -> Command:
    return build(click_tree())


def one_line(text: str) -> str:
    return " ".join(text.split())


def paragraphs(text: str) -> list[str]:
    return [one_line(p) for p in re.split(r"\n\s*\n", text.replace("\b", "")) if p.strip()]


def examples_for(root: Command) -> list[tuple[str, list[str]]]:
    """The examples whose every command is in the tree (tests/docs fails on a wrong option in any of them)."""
    return [(what, lines) for what, lines in EXAMPLES if not _missing_commands(root, lines)]


def _missing_commands(root: Command, lines: list[str]) -> list[str]:
    return [p for line in example_commands(lines) for p in example_problems(root, line) if p.endswith(NO_COMMAND)]


def example_commands(lines: list[str]) -> list[str]:
    """Example lines with backslash continuations joined."""
    joined = "\n".join(lines).replace("\\\n", " ")
    return joined.split("\n")


NO_COMMAND = " names no command"


def example_problems(root: Command, line: str) -> list[str]:
    """What in one example line does not match the tree: unknown commands and options."""
    problems = []
    for segment in re.split(r"\||&&|;|\$\(|\)|`", line):
        words = segment.split()
        while words and "=" in words[0] and not words[0].startswith("-"):
            words.pop(0)  # VAR=value before the command
        if not words or words[0] != PROG:
            continue
        node, rest = root, words[1:]
        while rest and node.commands:
            sub = node.find((rest[0],))
            if sub is None:
                break
            node, rest = sub, rest[1:]
        if node.commands:
            problems.append(f"'{segment.strip()}'{NO_COMMAND}")
            continue
        names = {n for p in node.options for n in p.names}
        for w in rest:
            if w in ("<", ">", ">>"):
                break
            if w.startswith("-") and w != "-" and w.split("=", 1)[0] not in names:
                problems.append(f"'{node.name}' has no option {w}")
    return problems


# -- bash ----------------------------------------------------------------------


def _shell_word_ok(word: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_./+@%^-]+", word):
        raise ValueError(f"cannot put {word!r} into a completion script unquoted")
    return word


def _bash_kind(p: Param) -> str:
    if p.kind == "choice":
        return "choice:" + ",".join(_shell_word_ok(c) for c in p.choices)
    return p.kind


def bash(root: Command) -> str:
    branches = []
    for c in root.walk():
        cmds = " ".join(_shell_word_ok(s.path[-1]) for s in c.commands)
        opts = " ".join("|".join(_shell_word_ok(n) for n in p.names) for p in c.options)
        vals = " ".join(f"{n}={_bash_kind(p)}" for p in c.options if p.takes_value for n in p.names)
        reps = " ".join(n for p in c.options if p.repeatable for n in p.names)
        args = " ".join(_bash_kind(p) + ("*" if p.repeatable else "") for p in c.arguments)
        branches.append(
            f"        '{' '.join(c.path)}')\n"
            f"            cmds=' {cmds} ' opts='{opts}'\n"
            f"            vals=' {vals} '\n"
            f"            reps=' {reps} ' args='{args}' ;;"
        )
    return BASH_TEMPLATE.format(
        header=_header("#"),
        branches="\n".join(branches),
        vault_options="|".join(VAULT_OPTIONS),
        timeout=ALIAS_TIMEOUT_S,
    )


BASH_TEMPLATE = r"""# bash completion for kmscli (bash 4.1 or later)
{header}

# _kmscli_spec PATH sets, for the command PATH ('' is kmscli itself):
#   cmds  its subcommands;  opts  its options, the spellings of one joined by '|';
#   vals  ' NAME=KIND ' for each option that takes a value, KIND being file, dir,
#         alias, none or choice:A,B;  reps  the options that may be repeated;
#   args  the KIND of each positional argument, '*' marking one that repeats.
_kmscli_spec() {{
    case $1 in
{branches}
        *) return 1 ;;
    esac
}}

# The vault's alias names: the first column of 'kmscli alias list'. Asked only
# when the vault opens without a prompt (a session, or a passphrase file or
# passphrase in the environment or on the line), with stdin and stderr on
# /dev/null and a {timeout} s timeout, so that TAB never asks, prints or hangs.
_kmscli_aliases() {{
    [[ -n ${{KMSCLI_SESSION-}} || -n ${{KMSCLI_PASSPHRASE_FILE-}} || -n ${{KMSCLI_PASSPHRASE+set}} ||
        " ${{globals[*]}} " == *" --passphrase-file "* ]] || return 0
    local timeout prog name rest
    timeout=$(type -P timeout || type -P gtimeout) || return 0
    prog=${{COMP_WORDS[0]}}
    [[ $prog == '~/'* ]] && prog=$HOME/${{prog#'~/'}}
    prog=$(type -P "$prog" || type -P kmscli) || return 0
    "$timeout" {timeout} "$prog" "${{globals[@]}}" alias list </dev/null 2>/dev/null |
        while IFS=$'\t' read -r name rest; do printf '%s\n' "$name"; done
}}

# _kmscli_values KIND PREFIX: the completions of a value.
_kmscli_values() {{
    case $1 in
        file) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$2") ;;
        dir) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -d -- "$2") ;;
        # Not compgen -W, which would expand $(...) in what the vault holds.
        alias) local name
            while IFS= read -r name; do [[ $name == "$2"* ]] && COMPREPLY+=("$name"); done < <(_kmscli_aliases) ;;
        choice:*) local choices=${{1#choice:}}
            mapfile -t COMPREPLY < <(compgen -W "${{choices//,/ }}" -- "$2") ;;
    esac
}}

# _kmscli_kind OPTION sets kind to the KIND of the option's value; fails for a flag.
_kmscli_kind() {{
    [[ $vals == *" $1="* ]] || return 1
    kind=${{vals#*" $1="}}
    kind=${{kind%% *}}
}}

# _kmscli_options PREFIX: the options of the command, less those already given once.
_kmscli_options() {{
    local group name seen
    COMPREPLY=()
    for group in $opts; do
        seen=''
        for name in ${{group//|/ }}; do
            [[ $used == *" $name "* && $reps != *" $name "* ]] && seen=1
        done
        [[ -n $seen ]] && continue
        for name in ${{group//|/ }}; do
            [[ $name == "$1"* ]] && COMPREPLY+=("$name")
        done
    done
}}

# _kmscli_words sets words and cword: COMP_WORDS up to the cursor, with the
# pieces that readline split at '=' or ':' (--spec=AES_256, env=prod) joined.
_kmscli_words() {{
    local line=${{COMP_LINE:0:COMP_POINT}} space word i
    words=()
    for (( i = 0; i <= COMP_CWORD; i++ )); do
        space=${{line%%[![:space:]]*}}
        line=${{line#"$space"}}
        word=${{COMP_WORDS[i]}}
        (( i == COMP_CWORD )) && word=$line
        if (( i > 0 )) && [[ -z $space ]] &&
            [[ $word == [:=]* || ${{words[${{#words[@]}}-1]}} == *[:=] ]]; then
            words[${{#words[@]}}-1]+=$word
        else
            words+=("$word")
        fi
        line=${{line#"$word"}}
    done
    cword=$(( ${{#words[@]}} - 1 ))
}}

_kmscli() {{
    local cur path='' word opt kind='' expect='' ended='' npos=0 used=' ' i n pre breaks=''
    local cmds opts vals reps args
    local -a words globals=() kinds
    local cword
    COMPREPLY=()
    _kmscli_words
    cur=${{words[cword]}}
    _kmscli_spec ''
    for (( i = 1; i < cword; i++ )); do
        word=${{words[i]}}
        if [[ -n $expect ]]; then
            case $expect in {vault_options}) globals+=("$expect" "$word") ;; esac
            expect=''
        elif [[ -z $ended && $word == -- ]]; then
            ended=1
        elif [[ -z $ended && $word == -?* ]]; then
            opt=${{word%%=*}}
            used+="$opt "
            if _kmscli_kind "$opt"; then
                if [[ $word == *=* ]]; then
                    case $opt in {vault_options}) globals+=("$opt" "${{word#*=}}") ;; esac
                else
                    expect=$opt
                fi
            fi
        elif (( npos == 0 )) && [[ $cmds == *" $word "* ]]; then
            path=${{path:+$path }}$word
            _kmscli_spec "$path"
            used=' '
        else
            npos=$(( npos + 1 ))
        fi
    done

    if [[ -n $expect ]]; then
        _kmscli_kind "$expect" && _kmscli_values "$kind" "$cur"
    elif [[ -z $ended && $cur == --*=* ]]; then
        opt=${{cur%%=*}}
        if _kmscli_kind "$opt"; then
            _kmscli_values "$kind" "${{cur#*=}}"
            (( ${{#COMPREPLY[@]}} )) && COMPREPLY=("${{COMPREPLY[@]/#/$opt=}}")
        fi
    elif [[ -z $ended && $cur == -* ]]; then
        _kmscli_options "$cur"
    elif [[ -n ${{cmds// /}} ]]; then
        (( npos == 0 )) && mapfile -t COMPREPLY < <(compgen -W "$cmds" -- "$cur")
    else
        read -ra kinds <<< "$args"
        n=${{#kinds[@]}}
        kind=''
        if (( npos < n )); then
            kind=${{kinds[npos]}}
        elif (( n > 0 )) && [[ ${{kinds[n-1]}} == *'*' ]]; then
            kind=${{kinds[n-1]}}
        fi
        kind=${{kind%'*'}}
        if [[ -n $kind ]]; then
            _kmscli_values "$kind" "$cur"
        elif [[ -z $ended ]]; then
            _kmscli_options "$cur"
        fi
    fi

    # readline replaces only the text after the last word-break character.
    [[ $COMP_WORDBREAKS == *:* ]] && breaks+=':'
    [[ $COMP_WORDBREAKS == *=* ]] && breaks+='='
    if [[ -n $breaks && $cur == *[$breaks]* ]]; then
        pre=${{cur%"${{cur##*[$breaks]}}"}}
        COMPREPLY=("${{COMPREPLY[@]#"$pre"}}")
    fi
    return 0
}}

complete -F _kmscli kmscli
"""


# -- zsh -----------------------------------------------------------------------


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _zsh_message(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:") or " "


def _zsh_action(p: Param) -> str:
    if p.kind in ("file", "dir"):
        return "_files" + (" -/" if p.kind == "dir" else "")
    if p.kind == "choice":
        return "(" + " ".join(_shell_word_ok(c) for c in p.choices) + ")"
    if p.kind == "alias":
        return "_kmscli_aliases"
    return " "


def _zsh_specs(c: Command) -> list[str]:
    specs = []
    for p in c.options:
        names = list(p.names)
        exclude = (
            "(- *)"
            if p.is_help or "--version" in names
            else ("(" + " ".join(names) + ")" if len(names) > 1 and not p.repeatable else "")
        )
        for n in names:
            suffix = ("=" if n.startswith("--") else "+") if p.takes_value else ""
            spec = f"{exclude}{'*' if p.repeatable else ''}{n}{suffix}[{_zsh_help(p.help)}]"
            if p.takes_value:
                spec += f":{_zsh_message(p.metavar)}:{_zsh_action(p)}"
            specs.append(_zsh_quote(spec))
    for p in c.arguments:
        colon = ":" if p.required else "::"
        star = "*" if p.repeatable else ""
        specs.append(_zsh_quote(f"{star}{colon}{_zsh_message(p.metavar)}:{_zsh_action(p)}"))
    return specs


def _zsh_function(c: Command) -> str:
    fname = "_" + "_".join((PROG, *c.path)).replace("-", "_")
    specs = _zsh_specs(c)
    if not c.commands:
        body = "    _arguments -S \\\n        " + " \\\n        ".join(specs)
        return f"{fname}() {{\n{body}\n}}\n"
    entries = "\n".join(f"        {_zsh_quote(s.path[-1] + ':' + one_line(s.help))}" for s in c.commands)
    cases = "\n".join(f"        ({s.path[-1]}) {fname}_{s.path[-1].replace('-', '_')} && ret=0 ;;" for s in c.commands)
    context = "-".join((PROG, *c.path))
    option_specs = "".join(f"        {spec} \\\n" for spec in specs)
    return f"""{fname}() {{
    local curcontext=$curcontext state state_descr line ret=1
    typeset -A opt_args
    _arguments -C -S \\
{option_specs}        ': :->command' \\
        '*:: :->argument' && ret=0
    case $state in
    (command)
        local -a commands=(
{entries}
        )
        _describe -t commands '{c.name} command' commands && ret=0 ;;
    (argument)
        curcontext=${{curcontext%:*:*}}:{context}-$words[1]:
        case $words[1] in
{cases}
        esac ;;
    esac
    return ret
}}
"""


def zsh(root: Command) -> str:
    functions = "\n".join(_zsh_function(c) for c in root.walk())
    return ZSH_TEMPLATE.format(
        header=_header("#"), functions=functions, timeout=ALIAS_TIMEOUT_S, vault_options="|".join(VAULT_OPTIONS)
    )


ZSH_TEMPLATE = r"""#compdef kmscli
# zsh completion for kmscli
{header}
# Install as _kmscli in a folder of $fpath, or source it after compinit.

# The vault's alias names: the first column of 'kmscli alias list'. Asked only
# when the vault opens without a prompt (a session, or a passphrase file or
# passphrase in the environment or on the line), with stdin and stderr on
# /dev/null and a {timeout} s timeout, so that TAB never asks, prints or hangs.
_kmscli_aliases() {{
    local -a names globals all
    local i timeout prog
    all=(${{(z)BUFFER}})
    for (( i = 2; i <= $#all; i++ )); do
        case $all[i] in
        ({vault_options}) globals+=($all[i] ${{(Q)all[i+1]/#\~/$HOME}}) ;;
        (({vault_options})=*) globals+=(${{(Q)all[i]/=\~\//=$HOME/}}) ;;
        esac
    done
    if [[ -z $KMSCLI_SESSION && -z $KMSCLI_PASSPHRASE_FILE && ${{+KMSCLI_PASSPHRASE}} == 0 &&
          ${{globals[(I)--passphrase-file*]}} == 0 ]]; then
        _message 'alias name (kmscli lists them only with a session or a passphrase source set)'
        return 1
    fi
    timeout=${{commands[timeout]:-$commands[gtimeout]}}
    prog=${{commands[${{(Q)all[1]}}]:-$commands[kmscli]}}
    [[ -n $timeout && -n $prog ]] || return 1
    names=(${{(f)"$($timeout {timeout} $prog $globals alias list </dev/null 2>/dev/null)"}})
    names=(${{names%%$'\t'*}})
    _wanted aliases expl 'alias name' compadd -a names
}}

{functions}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _kmscli "$@"
else
    compdef _kmscli kmscli
fi
"""


# -- fish ----------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(root: Command) -> str:
    cmd_cases, vopt_cases, lines = [], [], []
    for c in root.walk():
        key = " ".join(c.path)
        if c.commands:
            cmd_cases.append(
                f"        case {_fish_quote(key)}\n            echo "
                + " ".join(_shell_word_ok(s.path[-1]) for s in c.commands)
            )
        vopts = [n for p in c.options if p.takes_value for n in p.names]
        if vopts:
            vopt_cases.append(f"        case {_fish_quote(key)}\n            echo " + " ".join(vopts))
        at = f"-n {_fish_quote('__kmscli_at ' + _fish_quote(key))}"
        lines.append(f"\n# {c.name}")
        for s in c.commands:
            lines.append(f"complete -c kmscli {at} -a {s.path[-1]} -d {_fish_quote(one_line(s.help))}")
        for p in c.options:
            flags = " ".join(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}" for n in p.names)
            value = ""
            if p.takes_value:
                value = {
                    "file": " -r -F",
                    "dir": " -r -F",
                    "alias": " -x -a '(__kmscli_aliases)'",
                    "choice": " -x -a " + _fish_quote(" ".join(_shell_word_ok(x) for x in p.choices)),
                }.get(p.kind, " -x")
            lines.append(f"complete -c kmscli {at} {flags}{value} -d {_fish_quote(p.help)}")
        for i, p in enumerate(c.arguments):
            if p.kind == "none":
                continue
            cond = f"__kmscli_arg {_fish_quote(key)} {i}{' more' if p.repeatable else ''}"
            value = {
                "file": "-F",
                "dir": "-F",
                "alias": "-a '(__kmscli_aliases)'",
                "choice": "-a " + _fish_quote(" ".join(p.choices)),
            }[p.kind]
            lines.append(f"complete -c kmscli -n {_fish_quote(cond)} {value} -d {_fish_quote(p.metavar)}")
    return FISH_TEMPLATE.format(
        header=_header("#"),
        cmd_cases="\n".join(cmd_cases),
        vopt_cases="\n".join(vopt_cases),
        lines="\n".join(lines),
        timeout=ALIAS_TIMEOUT_S,
        vault_options=" ".join(VAULT_OPTIONS),
    )


FISH_TEMPLATE = r"""# fish completion for kmscli
{header}

# The subcommands of a command path ('' is kmscli itself).
function __kmscli_cmds --argument-names path
    switch $path
{cmd_cases}
    end
end

# The options of a command path that take a value.
function __kmscli_vopts --argument-names path
    switch $path
{vopt_cases}
    end
end

# Prints the command path of the line before the cursor, then how many
# positional arguments it has, then the vault options given (for aliases).
# Every completion's condition asks, so the answer is kept for the same line.
function __kmscli_state
    set -l words (commandline -opc)
    set -l key (string join \n -- $words)
    if set -q __kmscli_state_key; and test "$__kmscli_state_key" = "$key"
        printf '%s\n' $__kmscli_state_value
        return
    end
    set -e words[1]
    set -l path ''
    set -l npos 0
    set -l expect ''
    set -l ended 0
    set -l globals
    set -l cmds (string split ' ' -- (__kmscli_cmds ''))
    set -l vopts (string split ' ' -- (__kmscli_vopts ''))
    for w in $words
        if test -n "$expect"
            contains -- $expect {vault_options}; and set -a globals $expect $w
            set expect ''
        else if test $ended = 0; and string match -q -- -- $w
            set ended 1
        else if test $ended = 0; and string match -q -- '-?*' $w
            set -l opt (string split -m 1 = -- $w)[1]
            if contains -- $opt $vopts
                if string match -q -- '*=*' $w
                    contains -- $opt {vault_options}; and set -a globals $w
                else
                    set expect $opt
                end
            end
        else if test $npos = 0; and contains -- $w $cmds
            set path (string trim -- "$path $w")
            set cmds (string split ' ' -- (__kmscli_cmds $path))
            set vopts (string split ' ' -- (__kmscli_vopts $path))
        else
            set npos (math $npos + 1)
        end
    end
    set -g __kmscli_state_key $key
    set -g __kmscli_state_value $path $npos $globals
    printf '%s\n' $path $npos $globals
end

# True when the cursor is in command PATH.
function __kmscli_at --argument-names path
    set -l state (__kmscli_state)
    test "$state[1]" = "$path"
end

# True when the cursor is at positional argument N (from 0) of command PATH;
# with 'more', also at any later one.
function __kmscli_arg --argument-names path n more
    set -l state (__kmscli_state)
    test "$state[1]" = "$path"; or return 1
    test "$state[2]" = $n; or begin; test -n "$more"; and test "$state[2]" -gt $n; end
end

# The vault's alias names: the first column of 'kmscli alias list'. Asked only
# when the vault opens without a prompt (a session, or a passphrase file or
# passphrase in the environment or on the line), with stdin and stderr on
# /dev/null and a {timeout} s timeout, so that TAB never asks, prints or hangs.
function __kmscli_aliases
    set -l globals (__kmscli_state)[3..-1]
    if test -z "$KMSCLI_SESSION" -a -z "$KMSCLI_PASSPHRASE_FILE"; and not set -q KMSCLI_PASSPHRASE
        string match -q -- '--passphrase-file*' $globals; or return 0
    end
    set -l timeout (command -s timeout; or command -s gtimeout)[1]
    set -l prog (command -s (commandline -opc)[1]; or command -s kmscli)[1]
    test -n "$timeout" -a -n "$prog"; or return 0
    $timeout {timeout} $prog $globals alias list </dev/null 2>/dev/null | string replace -r '\t.*' ''
end

complete -c kmscli -f
{lines}
"""


# -- man page ------------------------------------------------------------------


def roff(text: str) -> str:
    """Text for a roff text line: backslashes, hyphens and non-ASCII escaped."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    out = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in out)
    return "\\&" + out if out[:1] in (".", "'") else out


def _b(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def _i(text: str) -> str:
    return f"\\fI{roff(text)}\\fR"


def _macro_arg(text: str) -> str:
    return '"' + roff(text).replace('"', "\\(dq") + '"'


def _option_tag(p: Param) -> str:
    tag = ", ".join(_b(n) for n in p.names)
    return f"{tag} {_i(p.metavar)}" if p.takes_value else tag


def _synopsis(c: Command) -> str:
    parts = [".B " + " ".join(roff(w) for w in (PROG, *c.path))]
    words = []
    for p in c.options:
        if p.required:
            long = next((n for n in p.names if n.startswith("--")), p.names[0])
            words.append(f"{_b(long)} {_i(p.metavar)}" if p.takes_value else _b(long))
    if any(not p.required for p in c.options):
        words.append("[" + _i("options") + "]")
    if c.commands:
        words.append(_i("command"))
    for p in c.arguments:
        meta = _i(p.metavar)
        words.append(meta if p.required or p.metavar.startswith("[") else f"[{meta}]")
    parts.append(" ".join(words))
    return "\n".join(parts)


def _param_list(params: list[Param]) -> list[str]:
    out = []
    for p in params:
        out += [".TP", _option_tag(p) if p.is_option else _i(p.metavar), roff(p.help)]
    return out


def _release_date(version: str) -> str:
    try:
        text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    except OSError:
        return ""
    m = re.search(rf"^## \[{re.escape(version)}\] - (\d{{4}}-\d{{2}}-\d{{2}})", text, re.M)
    return m.group(1) if m else ""


def exit_codes() -> dict[int, list[str]]:
    """Exit code -> the exception names that produce it, from kmscli/errors.py."""
    from kmscli import errors

    codes: dict[int, list[str]] = {
        v: [] for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)
    }
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, errors.KmsError) and obj.name not in codes[obj.exit_code]:
            codes[obj.exit_code].append(obj.name)
    return dict(sorted(codes.items()))


def man(root: Command) -> str:
    from kmscli import __version__
    from kmscli.audit import LOCK_SUFFIX as AUDIT_LOCK_SUFFIX
    from kmscli.audit import SEGMENT_DIGITS
    from kmscli.service import AUDIT_FILE
    from kmscli.vault.store import LOCK_SUFFIX as VAULT_LOCK_SUFFIX
    from kmscli.vault.store import VAULT_FILE

    summary = [re.sub(rf"^{PROG}:\s*", "", p) for p in paragraphs(root.help)]
    # NAME is the first sentence of the root help, less its "kmscli:" lead.
    name_line = summary[0].split(". ")[0] if summary else ""
    out = [
        f'.\\" {PROG}(1). Generated by scripts/gen_docs.py from the command tree: do not edit.',
        f'.\\" Regenerate with: {REGENERATE}',
        f'.TH KMSCLI 1 "{_release_date(__version__)}" "kmscli {__version__}" "User Commands"',
        ".nh",  # option and variable names must not be hyphenated
        ".ad l",
        ".SH NAME",
        f"{PROG} \\- {roff(name_line.rstrip('.'))}",
        ".SH SYNOPSIS",
        f".B {PROG}",
        f"[{_i('global options')}] {_i('command')} [{_i('options')}] [{_i('arguments')}]",
        ".br",
        f".B {PROG}",
        f"{_b('--version')} | {_b('--help')}",
        ".SH DESCRIPTION",
    ]
    for para in summary:
        out += [roff(para), ".PP"]
    out += [
        roff(
            "Data goes to standard output only (key ids, plaintext, ciphertext, JSON); messages go to standard "
            "error, an error being one line: "
        )
        + _b("kmscli: ")
        + _i("ExceptionName")
        + roff(": ")
        + _i("what to do")
        + roff(
            ". With --json, output has the shapes of AWS KMS responses. Without it, a terminal gets tables and "
            "a pipe gets tab-separated lines without a header."
        ),
        ".PP",
        roff(
            "KEY, wherever a command takes one, is a key id, alias/NAME, a key ARN or an alias ARN. "
            "-i and -o default to standard input and output, and - names them too; a file written with -o is "
            "mode 0600 and appears only when the command succeeds."
        ),
        ".PP",
        roff("The vault is unlocked with the first of these passphrase sources:"),
    ]
    sources = [
        (
            _b("KMSCLI_SESSION"),
            "a session from kmscli unlock; no key derivation runs per call, and a bad session "
            "never falls back to a passphrase;",
        ),
        (f"{_b('--passphrase-file')} {_i('PATH')} or {_b('KMSCLI_PASSPHRASE_FILE')}", "the first line of the file;"),
        (_b("KMSCLI_PASSPHRASE"), "the passphrase itself;"),
        ("the terminal", "a prompt on /dev/tty without echo, so that standard input stays free for data."),
    ]
    for n, (what, how) in enumerate(sources, 1):
        out += [f".IP {n}. 4", f"{what}: {roff(how)}"]
    out += [
        ".PP",
        roff(
            "With none of them and no terminal, a command fails at once with exit status 5. A passphrase is "
            "never taken as a command-line value, never logged and never echoed."
        ),
        ".SH GLOBAL OPTIONS",
        roff("These go before the command or after it:"),
        *_param_list([p for p in root.options if not p.is_help]),
        ".TP",
        _option_tag(next(p for p in root.options if p.is_help)),
        roff("Show the help of kmscli or of the command before it, and exit."),
        ".SH COMMANDS",
    ]
    for c in root.walk():
        if not c.path:
            continue
        out += [f".SS {_macro_arg(c.name)}", _synopsis(c), ".PP"]
        for n, para in enumerate(paragraphs(c.help)):
            out += ([".PP"] if n else []) + [roff(para)]
        if c.commands:
            out.append(roff("Its commands: ") + ", ".join(_b(s.path[-1]) for s in c.commands) + ".")
        out += _param_list([p for p in c.arguments])
        out += _param_list([p for p in c.options if not p.is_global and not p.is_help])
    out += [".SH ENVIRONMENT"]
    for var, text in ENVIRONMENT.items():
        out += [".TP", _b(var), roff(text)]
    vault_dir = "~/.local/share/kmscli"
    out += [
        ".SH FILES",
        ".TP",
        _i(f"{vault_dir}/{VAULT_FILE}"),
        roff(
            "The vault: the default on Linux (the platform's user data folder, $XDG_DATA_HOME/kmscli when that "
            "is set; on macOS ~/Library/Application Support/kmscli). It holds the keys, aliases, descriptions, tags "
            "and policies encrypted; only its format version and key-derivation parameters are readable. "
            "--vault or KMSCLI_VAULT name another."
        ),
        ".TP",
        _i(f"{VAULT_FILE}{VAULT_LOCK_SUFFIX}"),
        roff("Beside the vault: the lock that writers hold while they replace the vault."),
        ".TP",
        _i(AUDIT_FILE),
        roff(
            "Beside the vault: the audit log, one JSON object per line with CloudTrail's field names, chained "
            "with a key derived from the vault key. --audit-log or KMSCLI_AUDIT_LOG name another. Older files "
            f"are kept as {AUDIT_FILE}.{'0' * (SEGMENT_DIGITS - 1)}1 and up, and {AUDIT_FILE}{AUDIT_LOCK_SUFFIX} "
            "is its lock."
        ),
    ]
    if root.find(("unlock",)):
        out += [
            ".TP",
            _i("$XDG_RUNTIME_DIR/kmscli"),
            roff(
                "The private folder (0700) with a socket for each session agent that kmscli unlock starts: the "
                "default on Linux; KMSCLI_RUNTIME_DIR names another."
            ),
        ]
    out += [
        ".PP",
        roff("Files that kmscli creates are mode 0600, folders 0700."),
        ".SH EXIT STATUS",
    ]
    for code, names in exit_codes().items():
        out += [".TP", _b(str(code)), roff(EXIT_MEANINGS[code])]
        if names and code != 0:
            out += [".br", ", ".join(_b(n) for n in names)]
    for code, text in EXIT_OTHER.items():
        out += [".TP", _b(str(code)), roff(text)]
    out += [".SH EXAMPLES"]
    for what, lines in examples_for(root):
        out += [".PP", roff(what), ".PP", ".RS 4", ".nf", *[roff(line) for line in lines], ".fi", ".RE"]
    out += [
        ".SH SEE ALSO",
        ".BR jq (1)",
        ".PP",
        roff(
            "README.md, and docs/format.md (the ciphertext), docs/vault.md (the vault file), docs/audit.md (the "
            "audit record and its chain) and docs/policy.md (key policies) in the kmscli source tree."
        ),
        ".PP",
        roff("The AWS Key Management Service Developer Guide, whose API kmscli follows."),
    ]
    return "\n".join(out) + "\n"


# -- driver --------------------------------------------------------------------


def _header(comment: str) -> str:
    return (
        f"{comment} Generated by scripts/gen_docs.py from kmscli's command tree: do not edit.\n"
        f"{comment} Regenerate with: {REGENERATE}"
    )


def outputs(root: Command | None = None) -> dict[Path, str]:
    """Each generated file (relative to the repository) and what it should hold."""
    root = root or tree()
    return {
        Path("completions/kmscli.bash"): bash(root),
        Path("completions/kmscli.zsh"): zsh(root),
        Path("completions/kmscli.fish"): fish(root),
        Path("man/kmscli.1"): man(root),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file differs")
    args = parser.parse_args(argv)
    root = tree()
    for _what, lines in EXAMPLES:
        for problem in _missing_commands(root, lines):
            print(f"note: an example is left out of the man page: {problem}", file=sys.stderr)
    stale = []
    for rel, text in outputs(root).items():
        path = ROOT / rel
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(rel))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {rel}")
    if stale:
        print(f"stale: {', '.join(stale)}; regenerate with: {REGENERATE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
