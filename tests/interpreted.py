"""Run test code under Triton's interpreter on the CPU: ``TRITON_INTERPRET=1`` must be set before
Triton is imported, so the code runs in a fresh Python process (from the repository's root, with
``tests`` importable) and must print ``ok`` as its last line."""

import os
import subprocess
import sys


def run_interpreted(code: str, timeout: int = 300, **env: str) -> str:
    """Run ``code`` in a fresh interpreter with ``TRITON_INTERPRET=1`` (and ``env``); fails the test
    with the end of its stderr unless it exits 0 and its output ends with ``ok``. Returns stdout."""
    run = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tests')\n" + code],
                         env=dict(os.environ, TRITON_INTERPRET="1", **env), capture_output=True,
                         text=True, timeout=timeout)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
    return run.stdout
