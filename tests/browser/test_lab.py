"""The widget in a real JupyterLab in a real browser.

JupyterLab (from PyPI, in .venv) serves a temp dir holding a copy of
notebooks/quickstart.ipynb; headless Debian Chromium, driven by Playwright, opens it, runs
the ``%%kubemap`` cell and checks through the DOM that the widget shows 2 engines ready and a
full progress bar ("20/20 items"), then types 3 into the engines box, clicks Scale and sees
the ready count become 3. The screenshot lands in docs/screenshot.png (the README shows it).

tests/browser/setup.sh installs what is missing (chromium via apt-get, jupyterlab and
playwright via pip); the session fixture runs it, so nothing is ever skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "screenshot.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def browser_deps() -> None:
    res = subprocess.run(["bash", str(REPO / "tests" / "browser" / "setup.sh")],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.fail(f"tests/browser/setup.sh failed ({res.returncode}):\n{res.stdout}\n{res.stderr}",
                    pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(browser_deps, tmp_path):
    """A JupyterLab on 127.0.0.1 with a token, serving a copy of quickstart.ipynb."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "quickstart.ipynb", root / "quickstart.ipynb")
    config = tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)
    # no "receive Jupyter news?" toast over the widget, no update checks
    (config / "labconfig" / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ,
               JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.open_browser=False", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly",  # never asks PyPI for extensions
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.flush()
            pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-5000:],
                        pytrace=False)
        time.sleep(0.3)
    try:
        yield {"url": url, "token": token, "log": tmp_path / "lab.log", "root": root}
    finally:
        proc.send_signal(signal.SIGINT)  # the server shuts its kernels down (engines die too)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_widget_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)
    with chromium(tmp_path) as ctx:
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.goto(f"{lab['url']}/lab/tree/quickstart.ipynb?token={lab['token']}")
            _run_kubemap_cell(page)
            widget = page.locator(".kubemagic-widget")
            expect(widget).to_be_visible()
            # engines: the title's ready count, and a row per engine in the engines table
            expect(widget.locator(".kubemagic-ready")).to_have_text("2")
            expect(widget.locator(".kubemagic-requested")).to_have_text("2")
            expect(widget.locator("table.kubemagic-engines tr")).to_have_count(3)  # header + 2
            # the progress bar reached 100 %: label and bar
            expect(widget.get_by_text("20/20 items")).to_be_visible()
            bar = widget.locator(".widget-hprogress .progress-bar")
            expect(bar).to_have_attribute("style", _full_width())
            # scale from the widget: 3 in the engines box, click Scale
            box = widget.locator(".widget-text input").first
            box.fill("3")
            box.press("Enter")
            widget.get_by_role("button", name="Scale").click()
            expect(widget.locator(".kubemagic-requested")).to_have_text("3")
            expect(widget.locator(".kubemagic-ready")).to_have_text("3")
            expect(widget.locator("table.kubemagic-engines tr")).to_have_count(4)
            page.wait_for_timeout(300)  # let the engines table settle for the picture
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            if page.locator(".kubemagic-widget").count():
                print("widget DOM:\n" + page.locator(".kubemagic-widget").first.inner_html()[:8000])
            print("JupyterLab log:\n" + lab["log"].read_text()[-5000:])
            raise
    assert SCREENSHOT.stat().st_size > 10_000


RUN_ALL_CELLS = [
    "%load_ext kubemagic",
    "%%kubemap slow range(24) -n 2 --backend local --out first\n"
    "import time\ndef slow(x):\n    time.sleep(0.1)\n    return x * x",
    "print('between', sum(first))",
    "total = len(first)",
    "%%kubemap slow range(12) --out second\n# the same function, on the same engines",
    "print('after', total + len(second))",
    "print('last cell')",
]


def test_run_all_with_two_kubemap_cells(lab, tmp_path):
    """Run → Run All Cells queues every cell at once; each one runs, in order, once."""
    import re

    import nbformat
    from playwright.sync_api import expect

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in RUN_ALL_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, lab["root"] / "run_all.ipynb")
    expect.set_options(timeout=120_000)
    with chromium(tmp_path) as ctx:
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.goto(f"{lab['url']}/lab/tree/run_all.ipynb?token={lab['token']}")
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            expect(cells).to_have_count(len(RUN_ALL_CELLS))
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                   .or_(page.get_by_text("Python 3 (ipykernel) | Idle")).first).to_be_attached()
            page.locator(".lm-MenuBar-itemLabel").get_by_text("Run", exact=True).click()
            page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
            prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt")
            for i in range(len(RUN_ALL_CELLS)):
                expect(prompts.nth(i)).to_have_text(f"[{i + 1}]:")
            outputs = page.locator(".jp-Notebook .jp-CodeCell")
            expect(outputs.nth(2).locator(".jp-OutputArea-output")).to_contain_text(
                f"between {sum(x * x for x in range(24))}")
            expect(outputs.nth(5).locator(".jp-OutputArea-output")).to_contain_text("after 36")
            expect(outputs.nth(6).locator(".jp-OutputArea-output")).to_have_text("last cell")
            assert "Invalid Message" not in lab["log"].read_text()
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            print("JupyterLab log:\n" + lab["log"].read_text()[-5000:])
            raise


@contextlib.contextmanager
def chromium(tmp_path: Path):
    """Debian's Chromium, headless, driven by Playwright, with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()


def _full_width():
    import re

    return re.compile(r"width:\s*100(\.0+)?%")


def _run_kubemap_cell(page) -> None:
    """Wait for the kernel, then run the notebook's first two code cells with Shift+Enter."""
    from playwright.sync_api import expect

    cells = page.locator(".jp-Notebook .jp-CodeCell")
    expect(cells.nth(1)).to_be_visible()
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
           .or_(page.get_by_text("Python 3 (ipykernel) | Idle")).first).to_be_attached()
    for i in (0, 1):
        _run_cell(page, cells.nth(i))


def start_cell(page, cell) -> None:
    """Shift+Enter in the cell; again if the kernel did not take it (the prompt stays "[ ]:",
    e.g. the kernel was not connected yet)."""
    import re

    from playwright.sync_api import expect

    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(10):
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        try:
            expect(prompt).not_to_have_text(re.compile(r"^\[ \]:"), timeout=5_000)
            return
        except AssertionError:
            continue
    raise AssertionError("the cell never started (its prompt stayed '[ ]:')")


def _run_cell(page, cell) -> None:
    """Start the cell, then wait until it finished ("[N]:")."""
    import re

    from playwright.sync_api import expect

    start_cell(page, cell)
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"^\[\d+\]:"))
