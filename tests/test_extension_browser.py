"""The JupyterLab / Notebook 7 extension in a real browser: JupyterLab (and Notebook 7) on loopback,
headless Chromium driven by Playwright, the kernel talking to the loopback provider simulator.

A person's path: `%load_ext nbrouter`, a `%%llm` cell whose first target is rate limited (the route's
timeline shows an amber `advance` bar and a green `served` one; hovering a bar shows its row), the spend
item in the status bar (Notebook 7: the notebook's toolbar) counting the cell's exact cost, a second cell
(the cooling target is now `skipped`) and the spend updated, then the status board in the side panel
listing the cooling candidate, whose reset clears it. The `%%llm` cell's editor shows the magic line and
the Markdown prompt highlighted. Screenshots in light and dark themes go to
`artifacts/` at the repository root.

The extension under test is this checkout's build (nbrouter/labextension, which `pip install -e .`
builds). Chromium comes from the system (`/usr/bin/chromium`); under NBROUTER_REQUIRE_BROWSER=1 or CI a
missing Chromium, build or Notebook 7 fails the test instead of skipping it.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, TOKEN, _require_chromium, isolated_jupyter_env, jupyter_server

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "nbrouter" / "labextension"
ARTIFACTS = ROOT / "artifacts"
COMBO = "pair"
#: a price for model-b so the spend is a real sum: 1000 / 2000 USD per million tokens in / out
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 2000}
FIRST_ANSWER = "It costs $5 to $10 a month.\n\n$$E = mc^2$$"
STEP_MS = 30_000

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


def _required() -> bool:
    return os.environ.get("NBROUTER_REQUIRE_BROWSER") == "1" or bool(os.environ.get("CI"))


def _need(condition: bool, message: str) -> None:
    if not condition:
        if _required():
            pytest.fail(message)
        pytest.skip(message + "; CI has it, and there this test fails without it")


def _notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext nbrouter"),
        nbformat.v4.new_code_cell(f"%%llm {COMBO} -t 0.2\nWhat does it **cost**?"),
        nbformat.v4.new_code_cell(f"%%llm {COMBO}\nAnd now?"),
    ]
    nbformat.write(nb, str(path))


@pytest.fixture(params=["lab", "notebook"])
def server(request: pytest.FixtureRequest, sim: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """JupyterLab or Notebook 7 on 127.0.0.1 with its own HOME and Jupyter dirs, serving this checkout's
    build of the extension, with a config pointing at the simulator."""
    from nbrouter.testing.behaviours import RateLimited, Reply

    app = request.param
    _require_chromium()
    _need((BUILT / "package.json").exists(), f"the extension is not built ({BUILT}): `pip install -e .` builds it")
    if app == "notebook":
        _need(importlib.util.find_spec("notebook") is not None, "Notebook 7 is not installed: pip install -e '.[test]'")

    sim.script(RateLimited(retry_after=300), model="model-a")
    sim.script([Reply(FIRST_ANSWER, usage={"input_tokens": 12, "output_tokens": 30}),
                Reply("Still $5.", usage={"input_tokens": 10, "output_tokens": 10})], model="model-b")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[providers.sim]\nprotocol = "openai"\nbase_url = "{sim.openai_url}"\napi_key_env = "SIM_KEY"\n'
        'models = ["model-a", "model-b"]\n\n'
        f'[combos.{COMBO}]\ntargets = ["sim/model-a", "sim/model-b"]\n\n'
        f'[prices."sim/model-b"]\ninput_per_mtok = {PRICE["input_per_mtok"]}\noutput_per_mtok = {PRICE["output_per_mtok"]}\n',
        encoding="utf-8",
    )
    root = tmp_path / "notebooks"
    root.mkdir()
    _notebook(root / "route.ipynb")
    # this checkout's build first on Jupyter's path, before any installed copy
    labextensions = tmp_path / "jupyter-path" / "labextensions"
    labextensions.mkdir(parents=True)
    (labextensions / "nbrouter-labextension").symlink_to(BUILT, target_is_directory=True)
    env = isolated_jupyter_env(
        tmp_path, NBROUTER_CONFIG=str(config), NBROUTER_STATE=str(tmp_path / "state.sqlite3"),
        PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p),
        JUPYTER_PATH=str(tmp_path / "jupyter-path"),
    )
    path = "lab/tree/route.ipynb" if app == "lab" else "notebooks/route.ipynb"
    log_path = tmp_path / f"{app}.log"
    with jupyter_server(app, root, env, log_path) as base:
        yield {"app": app, "url": f"{base}/{path}?token={TOKEN}", "log": log_path}


def _cost(input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * PRICE["input_per_mtok"] + output_tokens * PRICE["output_per_mtok"]) / 1e6


def test_route_timeline_spend_and_status_board(server: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    app = server["app"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(STEP_MS)
        expect.set_options(timeout=STEP_MS)
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        try:
            page.goto(server["url"])
            cells = page.locator(".jp-Notebook .jp-Cell")
            expect(cells).to_have_count(3)
            # a cell run before the kernel is connected is dropped: wait for the kernel to be idle
            page.wait_for_function(
                "() => { const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                " return !!k && k.status === 'idle' && k.connectionStatus === 'connected'; }")

            def run(i: int) -> None:
                prompt = cells.nth(i).locator(".jp-InputPrompt")
                for _ in range(3):  # a keypress that lands while the page is still settling is lost: press again
                    cells.nth(i).locator(".cm-content").click()
                    page.keyboard.press("Shift+Enter")
                    try:
                        expect(prompt).not_to_have_text("[ ]:", timeout=5_000)
                        break
                    except AssertionError:
                        continue
                expect(prompt).to_have_text(re.compile(r"\[\d+\]:"))  # finished, not "[*]:"

            # a %%llm cell reads as a prompt: the magic line, then Markdown; other cells are left alone
            editor = cells.nth(1).locator(".cm-content")
            expect(editor.locator(".cm-nbr-magic")).to_have_text("%%llm")
            expect(editor.locator(".cm-nbr-combo")).to_have_text(COMBO)
            expect(editor.locator(".cm-nbr-option")).to_have_text("-t")
            expect(editor.locator(".cm-nbr-md-strong").first).to_be_visible()
            assert "".join(editor.locator(".cm-nbr-md-strong").all_inner_texts()) == "**cost**"
            expect(cells.nth(0).locator(".cm-nbr-magic")).to_have_count(0)

            spend = page.locator(".nbr-spend-item")
            # hidden while the kernel has no nbrouter
            expect(spend).to_be_hidden()
            run(0)
            expect(spend).to_be_visible()
            expect(spend).to_have_text("nbrouter: no calls yet")

            # the first cell: model-a is rate limited, model-b serves
            run(1)
            out = cells.nth(1).locator(".jp-OutputArea")
            bars = out.locator(".nbr-timeline .nbr-bar")
            expect(bars).to_have_count(2)
            expect(bars.nth(0)).to_have_class(re.compile(r"\bnbr-action-advance\b"))
            expect(bars.nth(1)).to_have_class(re.compile(r"\bnbr-action-served\b"))
            answer = out.locator(".nbr-answer")
            expect(answer).to_contain_text("It costs $5 to $10 a month.")
            expect(answer.locator("span.nbr-dollar")).to_have_count(2)
            expect(out.locator(".nbr-line-text")).to_contain_text("served by sim#default/model-b")
            first = _cost(12, 30)
            expect(spend).to_have_text(f"${first:.6f} · 1 call")

            # hovering a bar shows its attempt's row
            bars.nth(0).hover()
            tip = out.locator(".nbr-tip")
            expect(tip).to_be_visible()
            expect(tip).to_contain_text("sim#default/model-a")
            expect(tip).to_contain_text("status: 429")
            # the full table is one click away
            out.locator(".nbr-line").click()
            expect(out.locator("table.nbr-attempts tbody tr")).to_have_count(2)

            # the second cell: the cooling model-a is skipped, and the spend grows
            run(2)
            bars2 = cells.nth(2).locator(".nbr-timeline .nbr-bar")
            expect(bars2).to_have_count(2)
            expect(bars2.nth(0)).to_have_class(re.compile(r"\bnbr-action-skipped\b"))
            expect(bars2.nth(1)).to_have_class(re.compile(r"\bnbr-action-served\b"))
            expect(spend).to_have_text(f"${first + _cost(10, 10):.6f} · 2 calls")
            expect(spend).to_have_attribute("data-health", "degraded")

            # the status board lists the cooling candidate; its reset clears it
            spend.click()
            board = page.locator("#nbrouter-board")
            expect(board).to_be_visible()
            row = board.locator('tr.nbr-board-row[data-key="sim#default/model-a"]')
            expect(row).to_contain_text("cooldown")
            expect(row.locator("td").nth(1)).to_have_text(re.compile(r"cooldown: .* · \d+ (s|min) left"))
            page.screenshot(path=str(ARTIFACTS / f"extension-{app}-light.png"))
            row.get_by_role("button", name="reset").click()
            expect(row).to_contain_text("healthy")
            expect(row.get_by_role("button", name="reset")).to_be_disabled()
            expect(spend).to_have_attribute("data-health", "ok")

            # the dark theme: the same page, read from JupyterLab's theme variables
            page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
            expect(page.locator("body[data-jp-theme-light='false']")).to_have_count(1)
            # JupyterLab covers the page with its splash while the theme's stylesheet loads
            expect(page.locator("#jupyterlab-splash")).to_have_count(0)
            page.wait_for_function("() => getComputedStyle(document.body).getPropertyValue('--jp-layout-color0').trim() !== ''"
                                   " && getComputedStyle(document.body).backgroundColor !== 'rgb(255, 255, 255)'")
            page.screenshot(path=str(ARTIFACTS / f"extension-{app}-dark.png"))
            served = bars.nth(1).evaluate("b => getComputedStyle(b).backgroundColor")
            assert served not in ("", "rgba(0, 0, 0, 0)"), served
            # after a page reload the kernel still has nbrouter: the item finds its comm again
            page.reload()
            expect(cells).to_have_count(3)
            expect(spend).to_be_visible()
            expect(spend).to_have_text("nbrouter: no calls yet")  # the spend counts what arrives from now on

            ours = [m for m in console if m.startswith(("error", "pageerror")) and "nbrouter" in m.lower()]
            assert ours == [], ours
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / f"extension-{app}-failure.png"), full_page=True)
            print(server["log"].read_text()[-4000:])
            print("browser console:", *console[-60:], sep="\n")
            raise
        finally:
            browser.close()
