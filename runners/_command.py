"""From a service's ``run`` text to the argv to execute.

A command made only of plain words (``python -m http.server 8000``) is executed directly,
with no shell in between: one process fewer to start, and the service's pid is the
program's own pid. So is one whose quotes only keep text together, where the shell would
pass it on as is (``sh -c 'echo hi; sleep 1'``, ``python -c "print(1)"``): single quotes,
and double quotes holding no ``$``, backquote or backslash. Anything else a shell would
interpret (expansions, escapes, redirections, pipelines, several lines, assignments,
builtins) goes through ``<shell> -c <command>``. A single simple command is prefixed with
``exec`` there, so the shell replaces itself with the program; a script of several
commands never is.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import time
from dataclasses import dataclass
from typing import Literal

from .base import RunnerError

__all__ = ["Plan", "needs_shell", "plan_command", "resolve_program"]

# Characters the POSIX shell takes literally in an unquoted word (what shlex.quote leaves
# alone). Anything else outside quotes ($, `, \, globs, ~, braces, operators, #, !, ^,
# control characters, \r, non-ASCII) sends the command through a shell.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
# What a shell still expands inside double quotes.
_EXPANDS_IN_DOUBLE = re.compile(r"[$`\\]")

# Words that mean something to the shell itself when they come first: keywords, and
# builtins that have no program equivalent (or whose program does something else).
_SHELL_WORDS = frozenset({
    "!", "{", "}", "[[", "]]", "case", "coproc", "do", "done", "elif", "else", "esac", "fi",
    "for", "function", "if", "in", "select", "then", "time", "until", "while", ".", ":", "alias",
    "bg", "bind", "break", "builtin", "caller", "cd", "command", "compgen", "complete",
    "continue", "declare", "dirs", "disown", "enable", "eval", "exec", "exit", "export", "fc",
    "fg", "getopts", "hash", "help", "history", "jobs", "let", "local", "logout", "mapfile",
    "popd", "pushd", "read", "readarray", "readonly", "return", "set", "shift", "shopt", "source",
    "suspend", "times", "trap", "type", "typeset", "ulimit", "umask", "unalias", "unset", "wait",
})

# Control operators: where one command ends and another begins (or runs in the background).
_REDIRECTIONS = frozenset({"<", ">", ">>", "<<", "<<<", "<>", ">&", "<&", "&>", "&>>", ">|"})
_PUNCTUATION = frozenset("();<>|&")

# Shells that understand `exec` and `-c` like the POSIX shell; $SHELL is used only if it
# is one of these (a login shell can be fish, or /usr/sbin/nologin for a system user).
POSIX_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "ash", "yash", "posh"})
DEFAULT_SHELL = "/bin/sh"


@dataclass(frozen=True, slots=True)
class Plan:
    """What to execute: ``executable`` (absolute) with ``argv`` (argv[0] as written)."""

    executable: str
    argv: list[str]
    mode: Literal["direct", "shell", "script"]


def needs_shell(command: str) -> bool:
    """True when ``command`` is more than plain words a shell would pass through as is."""
    return _plain_words(command) is None


def _plain_words(command: str) -> list[str] | None:
    """The words of ``command`` if a shell would run it as a plain program call, else None."""
    raw = _literal_words(command.strip(" \t\n"))
    if not raw:
        return None
    if raw[0][0] == "exec" and len(raw) > 1 and not raw[1][0].startswith("-"):
        raw = raw[1:]  # `exec prog args` is exactly `prog args` without the shell
    program, quoted = raw[0]
    if quoted or program in _SHELL_WORDS or "=" in program:
        # A builtin or keyword (quoted, still a builtin to the shell), or `NAME=value
        # prog` (an assignment).
        return None
    return [word for word, _ in raw]


def _literal_words(text: str) -> list[tuple[str, bool]] | None:
    """``text`` split as the shell would split it, if it would expand nothing: each word
    (quotes removed) and whether it had quotes; None if some part needs the shell.

    Unquoted text must be plain word characters; single quotes keep anything but a line
    break; double quotes keep anything but ``$``, backquote, backslash and line breaks.
    """
    words: list[tuple[str, bool]] = []
    word: list[str] = []
    quoted = in_word = False
    index, end = 0, len(text)
    while index < end:
        char = text[index]
        if char in " \t":
            if in_word:
                words.append(("".join(word), quoted))
                word, quoted, in_word = [], False, False
            index += 1
            continue
        if char in "'\"":
            close = text.find(char, index + 1)
            if close < 0:
                return None  # unbalanced: the shell says so
            inside = text[index + 1 : close]
            if "\n" in inside or "\r" in inside or (char == '"' and _EXPANDS_IN_DOUBLE.search(inside)):
                return None
            word.append(inside)
            quoted = in_word = True
            index = close + 1
            continue
        match = _PLAIN_WORD.match(text, index)
        if match is None or (not in_word and char == "="):  # zsh expands a leading `=prog`
            return None
        word.append(match.group())
        in_word = True
        index = match.end()
    if in_word:
        words.append(("".join(word), quoted))
    return words


def _single_command(command: str) -> list[str] | None:
    """The shell tokens of a one-line command that ``exec`` can prefix, else None.

    Conservative: anything that might be several commands (``;``, ``&&``, ``|``, ``&``,
    subshells, ``$(...)``), starts with a keyword, builtin or assignment, or does not
    tokenize, is not prefixed. A false "no" only costs the shell process staying around.
    """
    text = command.strip(" \t\n")
    if not text or "\n" in text or "\r" in text:
        return None
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # a `#` mid-line hides nothing from this check
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: let the shell report it
        return None
    if not tokens:
        return None
    for token in tokens:
        if token and set(token) <= _PUNCTUATION and token not in _REDIRECTIONS:
            return None
    first = tokens[0]
    if first in _SHELL_WORDS or "=" in first or set(first) & _PUNCTUATION:
        return None
    return tokens


def _is_executable_file(path: str) -> bool | None:
    """True: a runnable regular file; False: exists but not runnable; None: no such file."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK)


# PATH lookups of the last moments: starting a few hundred services that run the same
# program walks PATH once, not once each. Short-lived, so a program installed earlier on
# PATH is seen on the next start, as execvp would see it.
_RESOLVED: dict[tuple[str, str, str], tuple[float, str]] = {}
_RESOLVED_SECONDS = 2.0


def resolve_program(name: str, env: dict[str, str], cwd: str, *, what: str = "command") -> str:
    """The absolute path ``execvp`` would run for ``name`` in the child (PATH from ``env``,
    relative entries against ``cwd``); RunnerError saying why there is none."""
    key = (name, env.get("PATH", os.defpath), cwd)
    now = time.monotonic()
    cached = _RESOLVED.get(key)
    if cached is not None and now - cached[0] < _RESOLVED_SECONDS and os.access(cached[1], os.X_OK):
        return cached[1]
    path = _resolve_program(name, env, cwd, what)
    if len(_RESOLVED) > 1024:
        _RESOLVED.clear()
    _RESOLVED[key] = (now, path)
    return path


def _resolve_program(name: str, env: dict[str, str], cwd: str, what: str) -> str:
    if "/" in name:
        path = os.path.normpath(os.path.join(cwd, name))
        found = _is_executable_file(path)
        if found:
            return path
        if found is None:
            raise RunnerError(f"{what} {name!r} not found (no such file: {path})")
        if os.path.isdir(path):
            raise RunnerError(f"{what} {name!r} is a directory: {path}")
        raise RunnerError(f"{what} {name!r} is not executable (permission denied): {path}")
    search = env.get("PATH", os.defpath)
    refused: str | None = None
    for entry in search.split(os.pathsep):
        directory = os.path.join(cwd, entry) if entry else cwd
        path = os.path.join(directory, name)
        found = _is_executable_file(path)
        if found:
            return os.path.normpath(path)
        if found is False and refused is None and not os.path.isdir(path):
            refused = os.path.normpath(path)
    if refused is not None:
        raise RunnerError(f"{what} {name!r} is not executable (permission denied): {refused}")
    raise RunnerError(f"{what} {name!r} not found on PATH")


def _shell_argv(shell: str | None, env: dict[str, str], cwd: str) -> tuple[str, list[str], bool]:
    """(executable, argv before the command, POSIX-like?) of the shell to use."""
    if shell is not None:
        try:
            words = shlex.split(shell)
        except ValueError:
            words = []
        if not words:
            raise RunnerError(f"invalid shell {shell!r}")
        executable = resolve_program(words[0], env, cwd, what="shell")
        if words[-1] != "-c":
            words.append("-c")
        return executable, words, os.path.basename(words[0]) in POSIX_SHELLS
    login = env.get("SHELL", "")
    if os.path.isabs(login) and os.path.basename(login) in POSIX_SHELLS and _is_executable_file(login):
        return login, [login, "-c"], True
    return DEFAULT_SHELL, [DEFAULT_SHELL, "-c"], True


def plan_command(
    command: str, shell: str | None, env: dict[str, str], cwd: str, *, force_shell: bool = False
) -> Plan:
    """Decide how to run ``command`` (see the module docstring); RunnerError if it cannot be."""
    if "\0" in command:
        raise RunnerError("the command contains a NUL character")
    if not command.strip():
        raise RunnerError("the command is empty (nothing to run)")
    if shell is None and not force_shell:
        words = _plain_words(command)
        if words is not None:
            return Plan(resolve_program(words[0], env, cwd), words, "direct")
    executable, argv, posix = _shell_argv(shell, env, cwd)
    script = command
    if posix:
        tokens = _single_command(command)
        if tokens is not None:
            script = "exec " + command.strip(" \t\n")
            # The program of a single command is known: say now if it does not exist,
            # rather than let the shell exit 127 with the reason in the capture file.
            first = command.split(None, 1)[0]
            if first == tokens[0] and _PLAIN_WORD.fullmatch(first):
                resolve_program(first, env, cwd)
    return Plan(executable, [*argv, script], "shell")
