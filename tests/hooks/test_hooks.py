"""run_hooks: sequential steps, environment, on_failure policies, output, runner steps, shells."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import anyio
import pytest

from hive.config import HookStep
from hive.daemon.hooks import LINE_CAP, OutputSink, run_hooks
from tests.hooks.helpers import Sink, base_env, hook_steps

pytestmark = pytest.mark.anyio

COUNTER = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo attempt $n"


async def test_steps_run_in_order(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [{"run": f"echo {i} >> order.txt"} for i in (1, 2, 3)])
    sink = Sink()
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    assert outcome.ok, outcome.message
    assert outcome.message == ""
    assert outcome.warnings == []
    assert (tmp_path / "order.txt").read_text() == "1\n2\n3\n"
    assert sink.hive() == [f"pre-up hook: running step {i}: echo {i} >> order.txt" for i in (1, 2, 3)]


async def test_no_steps_is_ok() -> None:
    sink = Sink()
    outcome = await run_hooks("post-down", [], env=base_env(), output=sink)
    assert outcome.ok
    assert sink.lines == []


async def test_environment_layering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVE_TEST_LEAK", "leaked")  # the daemon's env reaches hooks only via `env`
    show = 'printf "%s|%s|%s|%s|%s\\n" "$A" "$B" "$HIVE_HOOK_EVENT" "$HIVE_SERVICE_FQN" "${HIVE_TEST_LEAK:-unset}"'
    steps = hook_steps(tmp_path, "post-up", [
        {"run": f"{show} > first", "environment": {"B": "step"}},
        {"run": f"{show} > second"},
        {"run": 'echo "$HIVE_HOOK_EVENT" > third', "environment": {"HIVE_HOOK_EVENT": "mine"}},
        {"parallel": [{"run": 'echo "$G $C" > fourth', "environment": {"C": "child"}}],
         "environment": {"G": "group", "C": "group"}},
    ])
    env = base_env(A="base", B="base", HIVE_SERVICE_FQN="p:svc")
    before = dict(env)
    outcome = await run_hooks("post-up", steps, env=env, output=Sink())
    assert outcome.ok, outcome.message
    assert env == before  # the caller's mapping is left alone
    assert (tmp_path / "first").read_text() == "base|step|post-up|p:svc|unset\n"
    assert (tmp_path / "second").read_text() == "base|base|post-up|p:svc|unset\n"
    assert (tmp_path / "third").read_text() == "mine\n"  # the step's environment wins over HIVE_*
    assert (tmp_path / "fourth").read_text() == "group child\n"


async def test_abort_stops_at_the_failing_step(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"run": "touch first"},
        {"run": "echo progress; echo 'migration broke' >&2; exit 3"},
        {"run": "touch third"},
    ])
    sink = Sink()
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    assert not outcome.ok
    assert outcome.message == (
        "pre-up hook failed: step 2 (`echo progress; echo 'migration broke' >&2; exit 3`) "
        "exited with code 3: migration broke"
    )
    assert (tmp_path / "first").exists()
    assert not (tmp_path / "third").exists()
    assert outcome.message in sink.hive()
    assert "pre-up hook: skipping the remaining 1 step" in sink.hive()


async def test_post_up_defaults_to_abort(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "post-up", [{"run": "exit 1"}, {"run": "touch after"}])
    outcome = await run_hooks("post-up", steps, env=base_env(), output=Sink())
    assert not outcome.ok
    assert outcome.message == "post-up hook failed: step 1 (`exit 1`) exited with code 1"
    assert not (tmp_path / "after").exists()


async def test_down_hooks_warn_and_continue(tmp_path: Path) -> None:
    # pre-down defaults to on_failure: warn.
    steps = hook_steps(tmp_path, "pre-down", [
        {"run": "echo 'cannot drain' >&2; exit 1"},
        {"run": "touch second"},
    ])
    sink = Sink()
    outcome = await run_hooks("pre-down", steps, env=base_env(), output=sink)
    assert outcome.ok
    assert outcome.warnings == [
        "pre-down hook: step 1 (`echo 'cannot drain' >&2; exit 1`) exited with code 1: cannot drain"
    ]
    assert (tmp_path / "second").exists()
    assert any("continuing (on_failure: warn)" in line for line in sink.hive())


async def test_explicit_warn_in_pre_up(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"run": "exit 5", "on_failure": "warn"},
        {"run": "touch second"},
    ])
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=Sink())
    assert outcome.ok
    assert outcome.warnings == ["pre-up hook: step 1 (`exit 5`) exited with code 5"]
    assert (tmp_path / "second").exists()


async def test_retry_succeeds_on_the_third_attempt(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"run": f"{COUNTER}; [ $n -ge 3 ]", "on_failure": "retry", "retry_delay": "10ms"},
        {"run": "touch after"},
    ])
    sink = Sink()
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    assert outcome.ok, outcome.message
    assert outcome.warnings == []
    assert (tmp_path / "count").read_text() == "3\n"
    assert (tmp_path / "after").exists()
    assert sink.stream("stdout") == ["attempt 1", "attempt 2", "attempt 3"]
    hive = sink.hive()
    assert [line.split(": n=")[0] for line in hive if "running step 1" in line] == [
        f"pre-up hook: running step 1 (attempt {i} of 4)" for i in (1, 2, 3)
    ]
    assert sum("retrying in 10ms" in line for line in hive) == 2
    assert "pre-up hook: step 1 succeeded on attempt 3 of 4" in hive


async def test_retry_fails_after_retries_plus_one_attempts(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"run": f"{COUNTER}; exit 1", "on_failure": "retry", "retries": 2, "retry_delay": "10ms"},
        {"run": "touch after"},
    ])
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=Sink())
    assert not outcome.ok
    assert (tmp_path / "count").read_text() == "3\n"
    assert outcome.message.startswith("pre-up hook failed: step 1 (")
    assert outcome.message.endswith("exited with code 1: attempt 3 (after 3 attempts)")
    assert not (tmp_path / "after").exists()


async def test_output_lines_reach_the_sink(tmp_path: Path) -> None:
    command = (
        "echo out; echo err >&2; printf 'crlf\\r\\n'; printf '\\377bad\\n'; echo; "
        "head -c 70000 /dev/zero | tr '\\0' x; echo; echo after-long; printf 'no-newline'"
    )
    steps = hook_steps(tmp_path, "pre-up", [{"run": command}])
    sink = Sink()
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    assert outcome.ok, outcome.message
    assert sink.stream("stderr") == ["err"]
    assert sink.stream("stdout") == [
        "out", "crlf", "\ufffdbad", "", "x" * LINE_CAP, "after-long", "no-newline"
    ]


async def test_a_failing_sink_does_not_fail_the_hook(tmp_path: Path) -> None:
    def broken(stream: str, text: str) -> None:
        raise RuntimeError("sink is broken")

    steps = hook_steps(tmp_path, "pre-up", [{"run": "echo hello; touch done"}])
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=broken)
    assert outcome.ok
    assert (tmp_path / "done").exists()


async def test_runner_script_step(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    (tmp_path / "sub").mkdir()
    (tmp_path / "other").mkdir()
    steps = hook_steps(tmp_path, "pre-up", [
        # The block's working_dir and shell.
        {"runner": {"type": "script", "script": {
            "run": 'pwd > ../where1; echo "$X ${BASH_VERSION:+bash}" > ../env1',
            "working_dir": "sub", "shell": "bash"}},
         "environment": {"X": "one"}},
        # No working_dir in the block: the step's.
        {"runner": {"type": "script", "script": {"run": "pwd > ../where2"}},
         "working_dir": "other"},
        {"runner": {"type": "script", "script": {"run": "echo failing; exit 9"}}},
    ])
    sink = Sink()
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    assert not outcome.ok
    assert outcome.message == (
        "pre-up hook failed: step 3 (`echo failing; exit 9`) exited with code 9: failing"
    )
    assert (tmp_path / "where1").read_text().strip() == str(tmp_path / "sub")
    assert (tmp_path / "env1").read_text() == "one bash\n"
    assert (tmp_path / "where2").read_text().strip() == str(tmp_path / "other")


async def test_container_step_without_a_runner_fails_clearly(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"runner": {"type": "docker", "docker": {"image": "alpine:3"}}},
        {"run": "touch after"},
    ])
    sink = Sink()
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    assert not outcome.ok
    assert outcome.message == (
        "pre-up hook failed: step 1 (docker runner alpine:3): "
        "runner hook type 'docker' is not available"
    )
    assert not (tmp_path / "after").exists()
    assert "pre-up hook: running step 1: docker runner alpine:3" in sink.hive()


async def test_container_step_goes_to_run_container(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "post-down", [
        {"runner": {"type": "docker", "docker": {"image": "alpine:3"}}, "environment": {"S": "1"},
         "timeout": "7s"},
        {"runner": {"type": "podman", "podman": {"image": "busybox"}}, "on_failure": "abort"},
    ])
    calls: list[tuple[str, dict[str, str], float]] = []

    async def run_container(
        step: HookStep, env: Mapping[str, str], output: OutputSink, timeout: float
    ) -> int:
        assert step.runner is not None
        calls.append((step.runner.type, dict(env), timeout))
        output("stdout", f"hello from {step.runner.type}")
        return 0 if step.runner.type == "docker" else 7

    sink = Sink()
    outcome = await run_hooks("post-down", steps, env=base_env(A="a"), output=sink,
                              run_container=run_container)
    assert not outcome.ok
    assert outcome.message == "post-down hook failed: step 2 (podman runner busybox) exited with code 7: hello from podman"
    assert [(kind, timeout) for kind, _, timeout in calls] == [("docker", 7.0), ("podman", 60.0)]
    env = calls[0][1]
    assert (env["A"], env["S"], env["HIVE_HOOK_EVENT"]) == ("a", "1", "post-down")
    assert sink.stream("stdout") == ["hello from docker", "hello from podman"]


async def test_container_step_timeout_cancels_the_runner(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"runner": {"type": "docker", "docker": {"image": "alpine:3"}}, "timeout": "200ms"},
    ])
    cancelled = anyio.Event()

    async def run_container(
        step: HookStep, env: Mapping[str, str], output: OutputSink, timeout: float
    ) -> int:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    outcome = await run_hooks("pre-up", steps, env=base_env(), output=Sink(),
                              run_container=run_container)
    assert cancelled.is_set()
    assert outcome.message == (
        "pre-up hook failed: step 1 (docker runner alpine:3): Hook timed out after 200ms"
    )


async def test_container_runner_exception_is_a_failure(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"runner": {"type": "docker", "docker": {"image": "alpine:3"}}},
    ])

    async def run_container(
        step: HookStep, env: Mapping[str, str], output: OutputSink, timeout: float
    ) -> int:
        raise OSError("docker socket not found")

    outcome = await run_hooks("pre-up", steps, env=base_env(), output=Sink(),
                              run_container=run_container)
    assert outcome.message == (
        "pre-up hook failed: step 1 (docker runner alpine:3): docker hook failed: "
        "docker socket not found"
    )


async def test_missing_working_directory_is_a_failure(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [{"run": "true", "working_dir": "nope"}])
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=Sink())
    assert not outcome.ok
    assert outcome.message == (
        f"pre-up hook failed: step 1 (`true`): working directory {tmp_path / 'nope'} does not exist"
    )


def _exe(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return os.path.realpath(found)


@pytest.mark.parametrize(
    ("login_shell", "shell", "expected"),
    [
        ("/bin/bash", None, "bash"),
        ("/usr/bin/fish", None, "sh"),  # not a POSIX shell: /bin/sh
        ("/nonexistent/zsh", None, "sh"),  # missing: /bin/sh
        (None, None, "sh"),
        ("/usr/bin/fish", "bash", "bash"),  # the given shell wins
    ],
)
async def test_shell_selection(
    tmp_path: Path, login_shell: str | None, shell: str | None, expected: str
) -> None:
    expected_exe = _exe(expected) if expected != "sh" else os.path.realpath("/bin/sh")
    steps = hook_steps(tmp_path, "pre-up", [{"run": "readlink /proc/$$/exe > shell.txt"}])
    env = base_env() if login_shell is None else base_env(SHELL=login_shell)
    outcome = await run_hooks("pre-up", steps, env=env, output=Sink(), shell=shell)
    assert outcome.ok, outcome.message
    assert os.path.realpath((tmp_path / "shell.txt").read_text().strip()) == expected_exe


async def test_missing_shell_is_a_failure(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [{"run": "true"}, {"run": "true"}])
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=Sink(),
                              shell="/nonexistent/bash")
    assert outcome.message == "pre-up hook failed: step 1 (`true`): shell /nonexistent/bash not found"
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=Sink(), shell="no-such-sh")
    assert outcome.message == "pre-up hook failed: step 1 (`true`): shell no-such-sh not found on PATH"
