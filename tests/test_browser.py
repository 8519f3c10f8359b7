"""The combo builder in a real browser: JupyterLab on loopback, headless Chromium driven by Playwright.

A person's path: `%load_ext nbrouter` and `%llm builder`, name the combo, add three targets with the
picker (quickly, one after the other), drag the last one to the top (and move one with the keyboard's
picker and buttons), save, test it from the widget, then run a `%%llm NAME` cell and read its served-by
footer, watch the pool with `%llm status --live` (its tables fit or scroll in their box at 1,400 px), and
read an answer with dollar amounts and maths in it. In JupyterLab's light and dark themes every text of
the outputs must stand out from its background (4.5:1). The kernel talks to the loopback provider simulator; screenshots
(light and dark) are kept in `artifacts/` at the repository root.

Chromium comes from the system (`/usr/bin/chromium`, Debian's `chromium` package). CI installs it and
sets NBROUTER_REQUIRE_BROWSER=1 (and CI=true): there a missing Chromium fails the test. On a developer's
machine without it the test skips and says how to install it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TOKEN = "nbrouter-browser-test"
COMBO = "browsercombo"
MODELS = ["gpt-4o-mini", "gpt-4.1-mini", "claude-haiku-4-5"]
#: an answer with dollar amounts (shown as written) and maths in $$...$$ and \(...\) (typeset)
MONEY = "It costs $5 to $10 a month; the area is $$x^2 + y^2$$ and \\(a < b\\)."
#: WCAG's minimum contrast for text
MIN_CONTRAST = 4.5
#: every text under the elements matching `selector` whose contrast with what is behind it (as the browser
#: draws both, any CSS colour format, text and background alpha and opacities blended) is under `min`:
#: [{text, contrast, color, background, where}]. Disabled controls are left out (WCAG exempts them),
#: and so is typeset maths (drawn glyphs, not text colours of ours).
TEXT_CONTRAST_JS = """
([selector, min]) => {
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 1;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const rgba = (css) => {
    ctx.clearRect(0, 0, 1, 1);
    ctx.fillStyle = '#000';
    ctx.fillStyle = css;
    ctx.fillRect(0, 0, 1, 1);
    const [r, g, b, a] = ctx.getImageData(0, 0, 1, 1).data;
    return a === 0 ? [0, 0, 0, 0] : [r, g, b, a / 255];
  };
  const over = (top, under) => [0, 1, 2].map(i => top[i] * top[3] + under[i] * (1 - top[3]));
  const lum = (c) => c.map(v => v / 255).map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4)
                      .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  const behind = (el) => {
    const layers = [];
    for (let n = el; n; n = n.parentElement) {
      const bg = rgba(getComputedStyle(n).backgroundColor);
      if (bg[3] > 0) layers.push(bg);
      if (bg[3] >= 1) break;
    }
    let under = rgba(getComputedStyle(document.body).backgroundColor);
    under = under[3] > 0 ? under.slice(0, 3) : [255, 255, 255];
    for (const layer of layers.reverse()) under = over(layer, under);
    return under;
  };
  const opacity = (el) => { let o = 1; for (let n = el; n; n = n.parentElement) o *= parseFloat(getComputedStyle(n).opacity); return o; };
  const failures = [];
  const checked = new Set();
  for (const root of document.querySelectorAll(selector)) {
    for (const el of [root, ...root.querySelectorAll('*')]) {
      if (checked.has(el)) continue;
      checked.add(el);
      const text = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.data).join('').trim();
      if (!text || el.closest('mjx-container, svg, script, style')) continue;
      if (el.closest(':disabled, [disabled], .mod-disabled, [aria-disabled=true]')) continue;
      const box = el.getBoundingClientRect();
      const style = getComputedStyle(el);
      if (!box.width || !box.height || style.visibility === 'hidden') continue;
      const under = behind(el);
      const fg = rgba(style.color);
      fg[3] *= opacity(el);
      const [hi, lo] = [lum(over(fg, under)), lum(under)].sort((x, y) => y - x);
      const contrast = (hi + 0.05) / (lo + 0.05);
      if (contrast < min) {
        failures.push({ text: text.slice(0, 40), contrast: Math.round(contrast * 100) / 100, color: style.color,
                        background: 'rgb(' + under.map(Math.round).join(',') + ')',
                        where: (el.className && typeof el.className === 'string' ? el.className : el.tagName).slice(0, 60) });
      }
    }
  }
  return failures;
}
"""
#: where a text's lines break: the character before each break (for a name: `#` or `/` only)
LINE_BREAKS_JS = """
(el) => {
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  const chars = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    for (let i = 0; i < n.data.length; i++) {
      const range = document.createRange();
      range.setStart(n, i);
      range.setEnd(n, i + 1);
      const rect = range.getClientRects()[0];
      if (rect) chars.push([n.data[i], rect.top]);
    }
  }
  const breaks = [];
  for (let i = 1; i < chars.length; i++) {
    if (chars[i][1] > chars[i - 1][1] + 2) breaks.push(chars[i - 1][0] + chars[i][0]);
  }
  return breaks;
}
"""
#: the tables of an output that neither fit in the output's width nor scroll in a box of their own (one
#: without the widget's buttons, no wider than the output): [{table, why}]
BOX_OVERFLOW_JS = """
(el) => {
  const area = el.closest('.jp-OutputArea-output') || el;
  const limit = area.getBoundingClientRect().right + 1;
  const problems = [];
  for (const table of el.querySelectorAll('table')) {
    const name = (table.querySelector('th') || table).textContent.slice(0, 30);
    if (table.getBoundingClientRect().right <= limit) continue;
    let box = table.parentElement;
    while (box && box !== area && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX)) box = box.parentElement;
    if (!box || box === area) problems.push({ table: name, why: 'cut off: wider than the output and no box of its own scrolls' });
    else if (box.querySelector('button, select, input')) problems.push({ table: name, why: 'only the whole widget scrolls, buttons and all' });
    else if (box.getBoundingClientRect().right > limit) problems.push({ table: name, why: 'its scrolling box is wider than the output' });
  }
  return problems;
}
"""


def assert_readable(page: Any, selector: str, where: str) -> None:
    """Every text under `selector` has at least MIN_CONTRAST with what is behind it."""
    failures = page.evaluate(TEXT_CONTRAST_JS, [selector, MIN_CONTRAST])
    assert failures == [], f"{where}: text under {MIN_CONTRAST}:1 contrast: {failures}"


def set_theme(page: Any, theme: str) -> None:
    """Switch JupyterLab's (or Notebook 7's) theme and wait for its colours to apply."""
    from playwright.sync_api import expect

    light = theme == "JupyterLab Light"
    page.evaluate(f"() => window.jupyterapp.commands.execute('apputils:change-theme', {{theme: '{theme}'}})")
    expect(page.locator(f"body[data-jp-theme-light='{str(light).lower()}']")).to_have_count(1)
    # JupyterLab covers the page with its splash while the theme's stylesheet loads
    expect(page.locator("#jupyterlab-splash")).to_have_count(0)
    # the page's background is bright in a light theme and dark in a dark one once the stylesheet applies
    page.wait_for_function("(light) => { const s = getComputedStyle(document.body);"
                           " const c = (s.getPropertyValue('--jp-layout-color0').trim() || 'x');"
                           " const probe = document.createElement('div'); probe.style.color = c; document.body.appendChild(probe);"
                           " const m = getComputedStyle(probe).color.match(/\\d+(\\.\\d+)?/g); probe.remove();"
                           " if (!m) return false; const bright = (+m[0] + +m[1] + +m[2]) / 3 > 128;"
                           " return bright === light; }", arg=light)


#: how long any one step may take in the browser (the whole test stays well under 90 s)
STEP_MS = 30_000

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext nbrouter\n%llm builder"),
        nbformat.v4.new_code_cell(f"%%llm {COMBO}\nSay hello"),
        nbformat.v4.new_code_cell("%llm status --live"),
        nbformat.v4.new_code_cell("%%llm sim/money --no-stream\nHow much?"),
        nbformat.v4.new_code_cell("%%llm sim/broken --no-stream\nThis one fails"),
    ]
    nbformat.write(nb, str(path))


def _require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    message = f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)"
    if os.environ.get("NBROUTER_REQUIRE_BROWSER") == "1" or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message + "; CI installs it, and there this test fails without it")


@pytest.fixture
def lab(sim: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """JupyterLab on 127.0.0.1 with its own HOME and Jupyter dirs, a config pointing at the simulator."""
    _require_chromium()
    from nbrouter.testing import Reply, ServerError

    sim.script(Reply(MONEY), model="money")
    sim.script(ServerError(), model="broken", repeat_last=True)
    config = tmp_path / "config.toml"
    config.write_text(
        "[providers.sim]\n"
        'protocol = "openai"\n'
        f'base_url = "{sim.openai_url}"\n'
        'api_key_env = "SIM_KEY"\n'
        f"models = {json.dumps(MODELS)}\n",
        encoding="utf-8",
    )
    root = tmp_path / "notebooks"
    root.mkdir()
    _notebook(root / "builder.ipynb")
    env = isolated_jupyter_env(tmp_path, NBROUTER_CONFIG=str(config), NBROUTER_STATE=str(tmp_path / "state.sqlite3"))
    with jupyter_server("lab", root, env, tmp_path / "jupyterlab.log") as base:
        yield {"url": f"{base}/lab/tree/builder.ipynb?token={TOKEN}", "config": config, "log": tmp_path / "jupyterlab.log",
               "gate": tmp_path / "kernel-may-go-on"}


def isolated_jupyter_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a Jupyter server that touches nothing of the user's: its own HOME and Jupyter
    dirs under `tmp_path`, and no news or update checks (nothing leaves the machine, no toast covers a cell)."""
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    (tmp_path / "home").mkdir()
    return dict(
        os.environ,
        HOME=str(tmp_path / "home"),
        SIM_KEY=os.environ["SIM_KEY"],
        JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
        JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        IPYTHONDIR=str(tmp_path / "ipython"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
        **extra,
    )


@contextlib.contextmanager
def jupyter_server(app: str, root: Path, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """JupyterLab (`app="lab"`) or Notebook 7 (`"notebook"`) on 127.0.0.1 serving `root`; yields its base
    URL once it answers, and stops it afterwards."""
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyterlab" if app == "lab" else "notebook", "--ServerApp.ip=127.0.0.1",
           "--no-browser", f"--port={port}", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}"]
    if app == "lab":
        cmd += ["--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True"]
    else:
        cmd += ["--JupyterNotebookApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(root))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{app} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"{app} did not answer within 60 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)  # real I/O: a server process starting up
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


#: the kernel of the page's notebook, from JupyterLab's or Notebook 7's shell
KERNEL_JS = "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
#: run cell `i` of the page's notebook, as Shift+Enter does, and resolve once it has finished (a keypress
#: could land while the page is still settling and be lost, and pressing again could run the cell twice)
RUN_CELL_JS = """
(i) => {
  const notebook = window.jupyterapp.shell.currentWidget.content;
  notebook.deselectAll();
  notebook.activeCellIndex = i;
  return window.jupyterapp.commands.execute('notebook:run-cell');
}
"""


def run_cell(page: Any, cells: Any, i: int) -> None:
    """Run cell `i` and wait until it has finished (its prompt shows its execution count)."""
    from playwright.sync_api import expect

    page.evaluate(RUN_CELL_JS, i)
    expect(cells.nth(i).locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]:"))


@contextlib.contextmanager
def busy_kernel(page: Any, gate: Path) -> Iterator[None]:
    """Keep the page's kernel busy (running code that waits for `gate` to exist) for the block, then free it
    and wait until it is idle: what the block sends the kernel queues up behind the running code."""
    gate.unlink(missing_ok=True)  # (a block before this one left it)
    code = f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)"
    page.evaluate(f"(code) => {{ {KERNEL_JS}.requestExecute({{code, silent: true}}); }}", code)
    page.wait_for_function(f"() => {KERNEL_JS}.status === 'busy'")
    try:
        yield
    finally:
        gate.touch()
        page.wait_for_function(f"() => {KERNEL_JS}.status === 'idle'")


def _saved_targets(config: Path) -> list[Any] | None:
    combos = tomllib.loads(config.read_text(encoding="utf-8")).get("combos", {})
    return combos.get(COMBO, {}).get("targets")


def test_build_reorder_save_and_run_a_combo_in_jupyterlab(lab: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(STEP_MS)
        console_errors: list[str] = []
        page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: console_errors.append(str(exc)))
        expect.set_options(timeout=STEP_MS)
        try:
            page.goto(lab["url"])
            cells = page.locator(".jp-Notebook .jp-Cell")
            expect(cells).to_have_count(5)
            # a cell run before the kernel is connected is dropped: wait for the status bar's "Idle"
            expect(page.locator("#jp-main-statusbar").get_by_text("Idle")).to_be_visible()

            def run(i: int) -> None:
                run_cell(page, cells, i)

            # %load_ext nbrouter + %llm builder
            run(0)
            builder = cells.nth(0).locator(".jp-OutputArea")
            name = builder.locator("input[placeholder='used as %%llm NAME']")
            expect(name).to_be_visible()

            name.fill(COMBO + "-draft")
            model = builder.locator("input[placeholder='pick or type a model id']")
            tags = builder.locator(".nbrouter-steps .jupyter-widget-tag:not(input)")
            picker = builder.locator(".widget-dropdown", has=page.locator("label", has_text=re.compile(r"^step$"))).locator("select")
            # one target straight after the other, no pause, while the kernel is busy: none may be lost. The
            # browser holds back the model field's newer values until the kernel answers the first, so a click
            # that reads the field in the kernel would add the first model three times (issue: a lost "add")
            with busy_kernel(page, lab["gate"]):
                for model_id in MODELS:
                    model.fill(model_id)
                    builder.get_by_role("button", name="add", exact=True).click()
            expect(tags).to_have_text([f"sim/{m}" for m in MODELS])
            expect(builder.get_by_text("is already a step")).to_have_count(0)

            # drag the last step onto the first: it goes to the top (issue 26: reorder by drag)
            tags.nth(2).drag_to(tags.nth(0))
            order = [f"sim/{MODELS[2]}", f"sim/{MODELS[0]}", f"sim/{MODELS[1]}"]
            expect(tags).to_have_text(order)
            expect(picker.locator("option")).to_have_text([f"{i + 1}. {ref}" for i, ref in enumerate(order)])
            # the keyboard's way still works: pick the last step, up, then down again (it stays picked)
            picker.select_option(label=f"3. {order[2]}")
            up = builder.get_by_role("button", name="up", exact=True)
            expect(up).to_be_enabled()
            up.click()
            expect(tags).to_have_text([order[0], order[2], order[1]])
            builder.get_by_role("button", name="down", exact=True).click()
            expect(tags).to_have_text(order)

            # live validation says the draft is valid; save writes it through Router.save_combo
            expect(builder.get_by_text("✓ valid; not saved yet")).to_be_visible()
            # renamed, key by key as a person types, and saved at once while the kernel is busy: saved under the
            # name typed (in JupyterLab the rename reaches the kernel before the click, so save stays a plain Button)
            with busy_kernel(page, lab["gate"]):
                name.fill("")
                name.press_sequentially(COMBO)
                builder.get_by_role("button", name="save", exact=True).click()
            expect(builder.get_by_text(f"saved [combos.{COMBO}]")).to_be_visible()
            assert f"{COMBO}-draft" not in lab["config"].read_text()
            assert _saved_targets(lab["config"]) == order

            # the widget's own test call runs in a background thread and reports who served
            builder.get_by_role("button", name="test", exact=True).click()
            expect(builder.get_by_text(f"served by sim#default/{MODELS[2]}")).to_be_visible()

            # the saved combo works at once as %%llm NAME in this kernel
            run(1)
            footer = cells.nth(1).locator(".jp-OutputArea").get_by_text(f"served by sim#default/{MODELS[2]}")
            expect(footer.first).to_be_visible()

            # the pool's health, live: the serving candidate's row says so in words
            run(2)
            board = cells.nth(2).locator(".jp-OutputArea")
            expect(board.get_by_role("cell", name=f"sim#default/{MODELS[2]}", exact=True)).to_be_visible()
            expect(board.get_by_text("✓ healthy").first).to_be_visible()
            expect(board.get_by_text("refreshed every")).to_be_visible()

            # dollars are dollars; $$...$$ and \(...\) are typeset by JupyterLab's MathJax
            run(3)
            # the HTML fallback (.nbrouter-answer), or the extension's renderer where it is installed (.nbr-answer)
            answer = cells.nth(3).locator(".jp-OutputArea .nbrouter-answer, .jp-OutputArea .nbr-answer").first
            expect(answer).to_contain_text("It costs $5 to $10 a month")
            expect(answer.locator("mjx-container")).to_have_count(2)

            page.screenshot(path=str(ARTIFACTS / "builder-browser.png"), full_page=True)
            board.screenshot(path=str(ARTIFACTS / "status-board.png"))

            # a failed call: the live board's candidates table gets a long "last error" column
            run(4)
            expect(cells.nth(4).locator(".jp-OutputArea")).to_contain_text("AllTargetsFailed")
            expect(board.get_by_role("cell", name="sim#default/broken", exact=True)).to_be_visible()
            # the live board fits or scrolls in its own box at 1,400 px, also with a side panel open beside the
            # notebook: nothing is cut off on the right (issue 26: "last e..." was)
            page.evaluate("() => window.jupyterapp.shell.activateById('jp-property-inspector')")
            expect(page.locator("#jp-property-inspector")).to_be_visible()
            assert board.evaluate(BOX_OVERFLOW_JS) == []
            # light, then dark: every text of the builder, the board, the tables and the answer stands out from
            # what is behind it (issue 26: amber and green text on white were 2.7:1 and 4.1:1)
            assert_readable(page, ".jp-Notebook .jp-OutputArea", "JupyterLab light")
            page.locator(".lm-MenuBar-itemLabel", has_text="Settings").click()
            page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
            page.locator(".lm-Menu-itemLabel").get_by_text("JupyterLab Dark", exact=True).click()
            expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "false")
            expect(page.locator("#jupyterlab-splash")).to_have_count(0)
            page.wait_for_function("() => getComputedStyle(document.body).backgroundColor !== 'rgb(255, 255, 255)'")
            expect(board.get_by_text("✓ healthy").first).to_be_visible()
            assert_readable(page, ".jp-Notebook .jp-OutputArea", "JupyterLab dark")
            page.screenshot(path=str(ARTIFACTS / "builder-browser-dark.png"), full_page=True)
            board.screenshot(path=str(ARTIFACTS / "status-board-dark.png"))
            assert console_errors == [], console_errors  # the widgets, the answers and MathJax log no error
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "builder-browser-failure.png"), full_page=True)
            print(lab["log"].read_text()[-4000:])
            raise
        finally:
            browser.close()
