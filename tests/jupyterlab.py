"""Real JupyterLab driven through Debian's Chromium with Playwright, for the browser tests.

:func:`jupyterlab` starts ``jupyter lab`` on a free loopback port with a token, rooted in a folder
of the test's, with the test database's DSN in its environment (kernels inherit it, as a DBA's
kernels inherit their shell's). :func:`chromium` launches ``/usr/bin/chromium`` through
Playwright's own ``executable_path`` (Playwright's browser download cannot be reached here), with
the flags this closed network needs. ``.ci/run`` installs both; elsewhere the tests skip, naming
what is missing (in CI, where ``CI`` is set, they fail instead).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .pgbouncer import _free_port

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this
# machine's closed network refuses; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# No news pop-up over the screenshots; no autosave, so the file on disk is what the test saved.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


def require_browser() -> Any:
    """Playwright's sync API, or a skip naming the missing part (a failure in CI)."""
    missing = []
    if not CHROMIUM.exists():
        missing.append("Debian's chromium (apt-get install chromium)")
    try:
        from playwright import sync_api  # noqa: PLC0415 - a test extra, needed only here
    except ImportError:
        sync_api = None
        missing.append("Playwright for Python (pip install -e '.[test]')")
    if missing:
        what = " and ".join(missing) + "; .ci/run installs them"
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests need {what}")
        pytest.skip(f"needs {what}")
    return sync_api


@dataclass
class Lab:
    """A running JupyterLab: where it serves and which folder it shows."""

    url: str
    token: str
    root: Path
    log: Path

    def tree(self, relative: str) -> str:
        """The address that opens ``relative`` (a notebook under the root) in JupyterLab."""
        return f"{self.url}/lab/tree/{relative}?token={self.token}"


@contextmanager
def jupyterlab(root: Path, env: dict[str, str]) -> Iterator[Lab]:
    """JupyterLab serving ``root`` on a free loopback port, its kernels started with ``env`` added."""
    port, token = _free_port(), secrets.token_hex(16)
    log = Path(tempfile.mkstemp(prefix="zdm-jupyterlab-", suffix=".log")[1])
    config = Path(tempfile.mkdtemp(prefix="zdm-jupyter-config-"))
    argv = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_root=True",
        # A fresh workspace each time: no tabs restored from an earlier session.
        f"--LabApp.workspaces_dir={config / 'workspaces'}",
        f"--LabApp.user_settings_dir={config / 'settings'}",
        "--LabApp.news_url=",
        "--LabServerApp.announcements_url=",
    ]
    for plugin, values in SETTINGS.items():
        target = config / "settings" / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    proc_env = {**os.environ, **env, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(config)}
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=proc_env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield Lab(url, token, root, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium through Playwright; yields a page of a fresh browser context."""
    sync_api = require_browser()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            yield context.new_page()
        finally:
            browser.close()


# Every code cell's prompt: "[ ]:" never run, "[*]:" running or queued, "[7]:" done.
_PROMPTS = (
    "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim())"
)


def _kernel_state(lab: Lab, relative: str) -> str | None:
    """The execution state of the notebook's kernel, as the Jupyter server knows it (None: no
    session yet)."""
    address = f"{lab.url}/api/sessions?token={lab.token}"  # the lab's own loopback http address
    with urllib.request.urlopen(address, timeout=10) as answer:  # noqa: S310
        sessions = json.load(answer)
    for session in sessions:
        if session.get("path", "").endswith(relative) and session.get("kernel"):
            return str(session["kernel"].get("execution_state"))
    return None


def open_notebook(page: Any, lab: Lab, relative: str) -> None:
    """Open a notebook and wait until its kernel is started and idle, on the server and in the
    page. On a busy machine JupyterLab may ask which kernel to start (its kernel list came late):
    the default, the notebook's own, is chosen here, before any cell runs."""
    page.goto(lab.tree(relative))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    deadline = time.monotonic() + 120
    while _kernel_state(lab, relative) != "idle":
        if time.monotonic() > deadline:
            screenshot(page, "kernel-not-started")
            raise AssertionError(f"the kernel of {relative} did not start: see test-artifacts/")
        _choose_kernel(page)
        time.sleep(0.25)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    _choose_kernel(page)
    if page.locator("#jp-left-stack").is_visible():  # the notebook, not the file browser, in screenshots
        page.keyboard.press("Control+b")


def _choose_kernel(page: Any) -> None:
    """Press "Select" if JupyterLab asks which kernel to start (a slow kernel start on a busy
    machine): the default, the notebook's own. The dialog may come before or after Run All."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if dialog.count():
        dialog.locator("button", has_text="Select").click()


def run_all(page: Any) -> None:
    """Run > Run All Cells, after a click into the notebook (the Run menu acts on the last focused
    one). Started means the last cell's prompt changed to queued, running or a new number (a
    fast run may be done); a click that did not take (a menu still opening, a kernel dialog) is
    tried again, and a run that never starts leaves a screenshot in the artifacts."""
    before = page.evaluate(_PROMPTS)
    started = (
        f"before => {{ const p = ({_PROMPTS})(); const last = p[p.length - 1] || '';"
        " return last !== before[before.length - 1] && /\\[(\\*|\\d+)\\]/.test(last); }"
    )
    for attempt in (1, 2, 3):
        _choose_kernel(page)
        page.keyboard.press("Escape")
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if page.evaluate(started, before):
                return
            _choose_kernel(page)
            time.sleep(0.25)
        screenshot(page, f"run-all-not-started-{attempt}")
    raise AssertionError(f"Run All did not start (prompts before: {before}): see test-artifacts/")


def wait_idle(page: Any, timeout_s: float = 180) -> list[str]:
    """Wait until no cell is running or queued; return the prompts."""
    page.wait_for_function(
        f"() => {{ const p = ({_PROMPTS})(); return p.length && !p.some(x => x.includes('*')); }}",
        timeout=timeout_s * 1000,
    )
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=30_000)
    return list(page.evaluate(_PROMPTS))


def interrupt(page: Any) -> None:
    """The notebook toolbar's Stop button (interrupt the kernel)."""
    page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']").click()


def save(page: Any, path: Path) -> None:
    """Ctrl+S in the notebook, and wait until the file on disk changed."""
    before = path.stat().st_mtime_ns
    page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 20
    while path.stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} was not saved")
        time.sleep(0.1)


def output_text(page: Any) -> str:
    """The text of every cell output on the page, as the DBA sees it."""
    return str(
        page.evaluate(
            "() => [...document.querySelectorAll('.jp-OutputArea-output')].map(e => e.innerText).join('\\n')"
        )
    )


ARTIFACTS = Path(
    os.environ.get("ZDM_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts")
)


def screenshot(page: Any, name: str) -> Path:
    """A screenshot of the page into the test artifacts (``test-artifacts/``, not committed)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(target))
    return target
