"""The README's Python example runs as written, pasted into a script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import DaemonProcess, run_cli, write_project

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs_as_a_script(daemon: DaemonProcess, home: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has a Python example"
    script = home / "example.py"
    script.write_text(blocks[0])
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == str(daemon.pid)  # the blocking client
        # The async client follows crashes; its subscription opens right after the pid is
        # printed, so crashes keep coming until one is seen.
        project = write_project(home / "p", """
            version: "1"
            services:
              boom:
                runner: {type: script, script: {run: "exit 3"}}
                restart: {policy: always, delay: 0.1s}
        """)
        run_cli("up", str(project), "--timeout", "1")
        assert process.stdout.readline().strip() == "p:boom 3"
    finally:
        process.kill()
        process.wait()
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")
