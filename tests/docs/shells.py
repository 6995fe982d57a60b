"""Drive the completion scripts the way each shell does on TAB, and collect what they offer."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from .conftest import COMPLETIONS, HANG_GUARD_S

#: Word-break characters of readline that can occur inside a kmscli word unquoted.
BREAKS = "=:"


def comp_words(line: str) -> list[str]:
    """COMP_WORDS as bash makes them for ``line``: split at blanks, runs of '=' or ':' being words too."""
    words: list[str] = []
    for blank_word in line.split():
        words += [w for w in re.split(f"([{BREAKS}]+)", blank_word) if w]
    if not line or line[-1].isspace():
        words.append("")
    return words


def bash_complete(lines: list[str], env: dict[str, str], cwd: Path, wordbreaks: str | None = None) -> list[list[str]]:
    """COMPREPLY for each command line (cursor at its end), computed in one bash process."""
    script = [f"source {shlex.quote(str(COMPLETIONS / 'kmscli.bash'))}"]
    if wordbreaks is not None:
        script.append(f"COMP_WORDBREAKS={shlex.quote(wordbreaks)}")
    for line in lines:
        words = comp_words(line) if wordbreaks is None else (line.split() + ([""] if line[-1:].isspace() else []))
        script += [
            f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}",
            "COMP_WORDS=(" + " ".join(shlex.quote(w) for w in words) + ")",
            f"COMP_CWORD={len(words) - 1}",
            "COMPREPLY=(); _kmscli",
            "printf '%s\\n' \"${COMPREPLY[@]}\"; echo '--END--'",
        ]
    r = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=HANG_GUARD_S,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    chunks = r.stdout.split("--END--\n")[:-1]
    assert len(chunks) == len(lines), r.stdout
    return [[w for w in chunk.split("\n") if w] for chunk in chunks]


def fish_complete(lines: list[str], env: dict[str, str], cwd: Path) -> list[list[str]]:
    """What ``complete -C`` offers (candidates without descriptions) for each line, in one fish process."""
    script = [f"source {shlex.quote(str(COMPLETIONS / 'kmscli.fish'))}"]
    for line in lines:
        script.append(f"complete -C {shlex.quote(line)}; echo -- --END--")
    r = subprocess.run(
        ["fish", "--no-config", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=HANG_GUARD_S,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    chunks = r.stdout.split("--END--\n")[:-1]
    assert len(chunks) == len(lines), r.stdout
    return [[w.split("\t")[0] for w in chunk.split("\n") if w] for chunk in chunks]


ZSH_INIT = r"""
PROMPT='' RPROMPT=''
unset zle_bracketed_paste
autoload -Uz compinit && compinit -u -D
zstyle ':completion:*' insert-tab false
zstyle ':completion:*' list-grouped false
# Print every match that a completion function adds (after matching the
# word), then let completion go on; end the shell when completion is over.
compadd() {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
    local -a __hits
    builtin compadd -A __hits "$@"
    (( $#__hits )) || return 1
    print -rl -- ${^__hits/#/CANDIDATE:}
    builtin compadd "$@"
}
__done() { print -r -- COMPLETION-DONE; comppostfuncs=(__done) }
comppostfuncs=(__done)
# No list, no question, no beep: the driver reads the matches compadd prints.
unsetopt auto_list list_beep beep
print -r -- INIT-DONE
"""

ZSH_DRIVER = r"""
zmodload zsh/zpty || exit 3
local line init=$1 fdir=$2
shift 2
zpty z zsh -f -i
zpty -w z "fpath=(${(q)fdir} \$fpath); source ${(q)init}"
while zpty -r z line; do [[ $line == INIT-DONE* ]] && break; done
for cmdline in "$@"; do
    # Ctrl-U clears what the last completion left on the line.
    zpty -w -n z $'\C-u'"$cmdline"$'\t'
    while zpty -r z line; do
        [[ $line == *CANDIDATE:* ]] && print -r -- "${line#*CANDIDATE:}"
        [[ $line == *COMPLETION-DONE* ]] && break
    done
    print -r -- --END--
done
zpty -d z
"""


def zsh_complete(lines: list[str], env: dict[str, str], cwd: Path, tmp: Path) -> list[list[str]]:
    """The matches zsh's completion system offers on TAB for each line, typed into an interactive zsh on a pty.

    The script is installed as ``_kmscli`` in a folder of ``$fpath`` and autoloaded by compinit, as users do.
    """
    fdir = tmp / "zfunc"
    fdir.mkdir(exist_ok=True)
    (fdir / "_kmscli").write_text((COMPLETIONS / "kmscli.zsh").read_text())
    init = tmp / "zinit.zsh"
    init.write_text(ZSH_INIT)
    r = subprocess.run(
        ["zsh", "-f", "-c", ZSH_DRIVER, "zsh", str(init), str(fdir), *lines],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=HANG_GUARD_S,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    chunks = r.stdout.replace("\r", "").split("--END--\n")[:-1]
    assert len(chunks) == len(lines), r.stdout
    return [[w for w in chunk.split("\n") if w] for chunk in chunks]


def interactive_bash(keys: str, env: dict[str, str], cwd: Path, expect: str,
                     timeout: float = HANG_GUARD_S) -> str:
    """Type ``keys`` into an interactive bash on a pseudo-terminal; return what it shows once ``expect`` appears.

    This is readline itself deciding word boundaries and inserting the completion.
    It waits for what the screen shows, never for a time; ``timeout`` only guards
    against a hang.
    """
    import pty

    bash = shutil.which("bash") or "/bin/bash"
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(cwd)
        os.execve(bash, ["bash", "--norc", "--noprofile", "-i"], env)
    out = b""
    try:
        setup = (
            f"PS1='$ '; bind 'set bell-style none'; source {shlex.quote(str(COMPLETIONS / 'kmscli.bash'))}; "
            "echo READY-$((6*7))\n"
        )
        os.write(fd, setup.encode())
        out = _read_until(fd, b"READY-42", timeout)
        out = b""
        os.write(fd, keys.encode())
        out = _read_until(fd, expect.encode(), timeout)
        return out.decode(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} within {timeout}s; the terminal showed {out!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out
