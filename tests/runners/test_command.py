"""How a `run` text becomes an argv: direct exec for plain words, a shell otherwise."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runners._command import needs_shell, plan_command
from runners.base import RunnerError

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "SHELL": "/bin/sh"}


@pytest.mark.parametrize(
    "command",
    [
        "sleep 100",
        "python -m http.server 8000",
        "  sleep\t100  \n",
        "./bin/server --port=8000 --host 0.0.0.0",
        "node server.js --inspect=127.0.0.1:9229",
        "exec sleep 100",
        "true",
        "cmd a,b user@host 50% +x",
        "echo 'quoted'",
        'echo "q"',
    ],
)
def test_plain_words_need_no_shell(command: str) -> None:
    assert not needs_shell(command)


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        # Quotes that only keep text together: the shell would pass the words on as is.
        ("sh -c 'echo \"$$\" >> out; exec sleep 1'", ["sh", "-c", 'echo "$$" >> out; exec sleep 1']),
        ('python3 -c "print(1 + 1)"', ["python3", "-c", "print(1 + 1)"]),
        ("echo a'b c'd \"e'f\" ''", ["echo", "ab cd", "e'f", ""]),
        ("exec sleep '100'", ["sleep", "100"]),
    ],
)
def test_literal_quotes_are_removed_and_need_no_shell(command: str, argv: list[str], tmp_path: Path) -> None:
    plan = plan_command(command, None, ENV, str(tmp_path))
    assert plan.mode == "direct"
    assert plan.argv == argv


@pytest.mark.parametrize(
    "command",
    [
        "sleep 1 | cat", "a && b", "a; b", "a & b", "sleep 100 &", "a > out", "a < in", "a 2>&1",
        "echo $HOME", "echo ${X}", "echo `date`", "echo $(date)", 'echo "$HOME"', 'echo "`date`"',
        'echo "a\\b"', "'echo' hi", "'sleep' 1", "echo 'a\nb'", "echo 'open", "x='1' sleep 1",
        "echo a\\ b", "ls *.py", "ls file?", "ls [ab]", "cd ~", "ls ~/x", "echo {a,b}",
        "echo hi # comment", "FOO=1 sleep 100", "=sleep 1", "echo =x", "(sleep 1)", "! false",
        "sleep 1\nsleep 2", "sleep 1\r", "cd /tmp", "exit 3", "export A=1", ". ./env.sh",
        "source env.sh", "ulimit -n 1024", "exec", "exec -a name sleep 1", "exec cd /tmp",
        "trap '' TERM", "wait", "if true; then sleep 1; fi", "time sleep 1", "echo héllo", "",
    ],
)
def test_shell_syntax_needs_a_shell(command: str) -> None:
    assert needs_shell(command)


def test_direct_plan_resolves_on_the_child_path(tmp_path: Path) -> None:
    plan = plan_command("sleep 100", None, ENV, str(tmp_path))
    assert plan.mode == "direct"
    assert plan.argv == ["sleep", "100"]  # argv[0] as written
    assert os.path.isabs(plan.executable)
    assert os.path.basename(plan.executable) == "sleep"


def test_direct_plan_strips_a_leading_exec(tmp_path: Path) -> None:
    plan = plan_command("exec sleep 100", None, ENV, str(tmp_path))
    assert plan.mode == "direct"
    assert plan.argv == ["sleep", "100"]


def test_program_found_on_a_relative_path_entry(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "mytool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    plan = plan_command("mytool --x", None, {"PATH": "bin:/usr/bin"}, str(tmp_path))
    assert plan.executable == str(tool)
    plan = plan_command("./bin/mytool", None, {"PATH": "/usr/bin"}, str(tmp_path))
    assert plan.executable == str(tool)
    assert plan.argv == ["./bin/mytool"]


def test_missing_program_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match=r"^command 'no-such-prog-x' not found on PATH$"):
        plan_command("no-such-prog-x --flag", None, ENV, str(tmp_path))
    with pytest.raises(RunnerError, match=r"command './nope' not found \(no such file: .*/nope\)"):
        plan_command("./nope", None, ENV, str(tmp_path))


def test_not_executable_and_directory_are_clear_errors(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    script.chmod(0o644)
    with pytest.raises(RunnerError, match=r"command './script.sh' is not executable \(permission denied\)"):
        plan_command("./script.sh", None, ENV, str(tmp_path))
    with pytest.raises(RunnerError, match=r"command 'script.sh' is not executable"):
        plan_command("script.sh", None, {"PATH": str(tmp_path)}, str(tmp_path))
    (tmp_path / "adir").mkdir()
    with pytest.raises(RunnerError, match=r"command './adir' is a directory"):
        plan_command("./adir", None, ENV, str(tmp_path))


def test_single_command_is_prefixed_with_exec(tmp_path: Path) -> None:
    plan = plan_command("sleep 100 > /dev/null 2>&1", None, ENV, str(tmp_path))
    assert plan.mode == "shell"
    assert plan.argv == ["/bin/sh", "-c", "exec sleep 100 > /dev/null 2>&1"]
    plan = plan_command("echo 'a;b' \"$HOME\"", None, ENV, str(tmp_path))
    assert plan.argv[-1] == "exec echo 'a;b' \"$HOME\""


@pytest.mark.parametrize(
    "command",
    [
        "sleep 1 | cat", "a && b", "a; b", "sleep 1 &", "FOO=1 sleep 1", "cd /tmp && ls",
        "exit 3", "exec sleep 1 > x", "(sleep 1)", "{ sleep 1; }", "echo $(a; b)",
        "sleep 1\nsleep 2", "if true; then :; fi", "echo 'unbalanced",
    ],
)
def test_compound_commands_are_not_prefixed(command: str, tmp_path: Path) -> None:
    plan = plan_command(command, None, ENV, str(tmp_path))
    assert plan.mode == "shell"
    assert plan.argv[-1] == command  # verbatim: the shell stays and runs all of it


def test_single_command_with_a_missing_program_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="command 'no-such-prog-x' not found on PATH"):
        plan_command("no-such-prog-x > out.log", None, ENV, str(tmp_path))


def test_shell_choice(tmp_path: Path) -> None:
    cwd = str(tmp_path)
    # $SHELL from the child's environment when it is a POSIX-family shell ...
    bash = plan_command("a | b", None, {**ENV, "SHELL": "/bin/bash"}, cwd)
    assert bash.argv[:2] == ["/bin/bash", "-c"]
    # ... but not a login shell that is no shell (system users) or speaks another language.
    for login in ("/usr/sbin/nologin", "/bin/false", "/usr/bin/fish", "/no/such/zsh", "bash"):
        plan = plan_command("a | b", None, {**ENV, "SHELL": login}, cwd)
        assert plan.argv[:2] == ["/bin/sh", "-c"], login
    plan = plan_command("a | b", None, {"PATH": "/usr/bin:/bin"}, cwd)
    assert plan.argv[:2] == ["/bin/sh", "-c"]


def test_explicit_shell(tmp_path: Path) -> None:
    cwd = str(tmp_path)
    plan = plan_command("sleep 100", "bash", ENV, cwd)  # an explicit shell is always used
    assert plan.mode == "shell"
    assert os.path.basename(plan.executable) == "bash"
    assert plan.argv == ["bash", "-c", "exec sleep 100"]
    plan = plan_command("echo hi", "bash -eu", ENV, cwd)
    assert plan.argv == ["bash", "-eu", "-c", "exec echo hi"]
    plan = plan_command("print(1)", "python3", ENV, cwd)  # not a POSIX shell: no `exec`
    assert plan.argv == ["python3", "-c", "print(1)"]
    with pytest.raises(RunnerError, match="shell 'no-such-shell' not found on PATH"):
        plan_command("echo hi", "no-such-shell", ENV, cwd)


def test_empty_or_nul_command(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="empty"):
        plan_command("  \n", None, ENV, str(tmp_path))
    with pytest.raises(RunnerError, match="NUL"):
        plan_command("sleep\0 1", None, ENV, str(tmp_path))


def test_unreadable_path_entries_are_skipped(tmp_path: Path) -> None:
    plan = plan_command("sleep 1", None, {"PATH": f"/no/such/dir:{tmp_path}:/usr/bin:/bin"}, str(tmp_path))
    assert stat.S_ISREG(os.stat(plan.executable).st_mode)
