"""The JupyterLab / Notebook 7 extension in a real browser: JupyterLab (and Notebook 7) on loopback,
headless Chromium driven by Playwright, the kernel talking to the loopback provider simulator.

A person's path: `%load_ext nbrouter`, a `%%llm` cell whose first target is rate limited (the route's
timeline shows an amber `advance` bar and a green `served` one; hovering a bar shows its row), the spend
item in the status bar (Notebook 7: the notebook's toolbar) counting the cell's exact cost, a second cell
(the cooling target is now `skipped`), an `--over` batch and a test from the combo builder, and the spend
is the session's one total, the kernel ledger's that `%llm cost` counts, also after a page reload. The
status board in the side panel lists the cooling candidate, with names that wrap only at `#` and `/` in a
panel wide enough for them, and its reset leaves it "flaky", as `%llm status` calls it. Every text of the
outputs, the status item, the board and the highlighted `%%llm` editor is at least 4.5:1 in the light and
the dark theme. A second notebook runs `-f code` with Run All twice and keeps the same cells. Screenshots
in light and dark themes go to `artifacts/` at the repository root.

The extension under test is this checkout's build (nbrouter/labextension, which `pip install -e .`
builds). Chromium comes from the system (`/usr/bin/chromium`); under NBROUTER_REQUIRE_BROWSER=1 or CI a
missing Chromium, build or Notebook 7 fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from test_browser import (CHROMIUM, CHROMIUM_ARGS, LINE_BREAKS_JS, TOKEN, _require_chromium, assert_readable,
                          isolated_jupyter_env, jupyter_server, run_cell, set_theme)

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
        nbformat.v4.new_code_cell(f"%%llm {COMBO}\n# And now?\n> a *quote* with `code` and a [link](https://example.org)"),
        nbformat.v4.new_code_cell("items = ['one', 'two']"),
        nbformat.v4.new_code_cell(f"%%llm {COMBO} --over items\nSay {{item}}"),
        nbformat.v4.new_code_cell(f"%llm builder {COMBO}"),
        nbformat.v4.new_code_cell("%llm status"),
        nbformat.v4.new_code_cell(TOTAL_CELL),
    ]
    nbformat.write(nb, str(path))


#: prints the session's total as the kernel counts it: the ledger's (`%llm cost`) and the router's budget's
TOTAL_CELL = ("m = get_ipython().magics_manager.registry['LLMMagics']\n"
              "print(f'TOTAL ${m.ledger.total.usd:.6f} · {m.ledger.calls} calls · budget ${m.router.budget.spent:.6f}')")
CODE_REPLY = "```python\nprint('written below')\n```"


def _code_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext nbrouter"),
        nbformat.v4.new_code_cell("%%llm sim/coder -f code --no-stream\nprint something"),
        nbformat.v4.new_code_cell("print('the end')"),
    ]
    nbformat.write(nb, str(path))


@contextlib.contextmanager
def _serving(app: str, tmp_path: Path, config_text: str, notebooks: dict[str, Callable[[Path], None]]) -> Iterator[dict[str, Any]]:
    """JupyterLab or Notebook 7 on 127.0.0.1 with its own HOME and Jupyter dirs, serving this checkout's
    build of the extension, with the config given and the notebooks written: `{"app", "url": {name: url}, "log"}`."""
    _require_chromium()
    _need((BUILT / "package.json").exists(), f"the extension is not built ({BUILT}): `pip install -e .` builds it")
    if app == "notebook":
        _need(importlib.util.find_spec("notebook") is not None, "Notebook 7 is not installed: pip install -e '.[test]'")
    config = tmp_path / "config.toml"
    config.write_text(config_text, encoding="utf-8")
    root = tmp_path / "notebooks"
    root.mkdir()
    for name, write in notebooks.items():
        write(root / name)
    # this checkout's build first on Jupyter's path, before any installed copy
    labextensions = tmp_path / "jupyter-path" / "labextensions"
    labextensions.mkdir(parents=True)
    (labextensions / "nbrouter-labextension").symlink_to(BUILT, target_is_directory=True)
    env = isolated_jupyter_env(
        tmp_path, NBROUTER_CONFIG=str(config), NBROUTER_STATE=str(tmp_path / "state.sqlite3"),
        PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p),
        JUPYTER_PATH=str(tmp_path / "jupyter-path"),
    )
    log_path = tmp_path / f"{app}.log"

    def url(base: str, name: str) -> str:
        return f"{base}/{'lab/tree' if app == 'lab' else 'notebooks'}/{name}?token={TOKEN}"

    with jupyter_server(app, root, env, log_path) as base:
        yield {"app": app, "url": {name: url(base, name) for name in notebooks}, "log": log_path}


def _sim_provider(sim: Any) -> str:
    return (f'[providers.sim]\nprotocol = "openai"\nbase_url = "{sim.openai_url}"\napi_key_env = "SIM_KEY"\n'
            'models = ["model-a", "model-b"]\n\n')


@pytest.fixture(params=["lab", "notebook"])
def server(request: pytest.FixtureRequest, sim: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The route and code notebooks, with a config pointing at the simulator."""
    from nbrouter.testing.behaviours import RateLimited, Reply

    sim.script(RateLimited(retry_after=300), model="model-a")
    sim.script([Reply(FIRST_ANSWER, usage={"input_tokens": 12, "output_tokens": 30}),
                Reply("Still $5.", usage={"input_tokens": 10, "output_tokens": 10})], model="model-b")
    config = (_sim_provider(sim) + f'[combos.{COMBO}]\ntargets = ["sim/model-a", "sim/model-b"]\n\n'
              f'[prices."sim/model-b"]\ninput_per_mtok = {PRICE["input_per_mtok"]}\noutput_per_mtok = {PRICE["output_per_mtok"]}\n')
    with _serving(request.param, tmp_path, config, {"route.ipynb": _notebook, "code.ipynb": _code_notebook}) as served:
        yield {**served, "url": served["url"]["route.ipynb"], "code_url": served["url"]["code.ipynb"]}


@contextlib.contextmanager
def _page(served: dict[str, Any], name: str) -> Iterator[Any]:
    """A Chromium page with the test's step timeouts; on a failure, a screenshot and the server's log."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(STEP_MS)
        expect.set_options(timeout=STEP_MS)
        try:
            yield page
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"extension-{served['app']}-{name}-failure.png"), full_page=True)
            print(served["log"].read_text()[-4000:])
            raise
        finally:
            browser.close()


def _cost(input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * PRICE["input_per_mtok"] + output_tokens * PRICE["output_per_mtok"]) / 1e6


#: what the test reads and checks the contrast of: the outputs, the status item, the board, the %%llm editor
READ = (".jp-Notebook .jp-OutputArea, .nbr-spend-item, #nbrouter-board, .cm-nbr-magic, .cm-nbr-combo, .cm-nbr-option,"
        " .cm-nbr-prompt-line")
#: a line of a note may break after a space or a punctuation mark, never between two letters or digits
MID_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9]$")


def _open(page: Any, url: str, cells: int) -> Any:
    from playwright.sync_api import expect

    page.goto(url)
    found = page.locator(".jp-Notebook .jp-Cell")
    expect(found).to_have_count(cells)
    # a cell run before the kernel is connected is dropped: wait for the kernel to be idle
    page.wait_for_function(
        "() => { const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return !!k && k.status === 'idle' && k.connectionStatus === 'connected'; }")
    return found


def _run(page: Any, cells: Any, i: int) -> None:
    run_cell(page, cells, i)


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
            cells = _open(page, server["url"], 8)

            def run(i: int) -> None:
                _run(page, cells, i)

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

            # an --over batch (two calls) and a test from the builder count in the same total (issue 26)
            run(3)
            run(4)
            expect(spend).to_have_text(re.compile(r" · 4 calls$"))
            run(5)
            cells.nth(5).locator(".jp-OutputArea").get_by_role("button", name="test", exact=True).click()
            expect(cells.nth(5).locator(".jp-OutputArea").get_by_text("served by sim#default/model-b").first).to_be_visible()
            expect(spend).to_have_text(re.compile(r" · 5 calls$"))
            run(7)
            printed = cells.nth(7).locator(".jp-OutputArea")
            expect(printed).to_contain_text("TOTAL")
            total = re.search(r"TOTAL \$(\S+) · (\d+) calls · budget \$(\S+)", printed.inner_text())
            assert total is not None, printed.inner_text()
            assert total.group(1) == total.group(3), total.group(0)  # the ledger's total is the router's budget's
            session_total = f"${total.group(1)} · {total.group(2)} calls"
            expect(spend).to_have_text(session_total)

            # the status board lists the cooling candidate, in a panel wide enough for every name on one line
            spend.click()
            board = page.locator("#nbrouter-board")
            expect(board).to_be_visible()
            row = board.locator('tr.nbr-board-row[data-key="sim#default/model-a"]')
            expect(row).to_contain_text("cooldown")
            expect(row.locator("td").nth(1)).to_have_text(re.compile(r"! cooling down · cooldown: .* · \d+ (s|min) left"))
            page.wait_for_function("() => { const b = document.querySelector('#nbrouter-board');"
                                   " return b && b.scrollWidth <= b.clientWidth && b.getBoundingClientRect().right <= window.innerWidth; }")
            for name in board.locator("td.nbr-name").all():  # at 1,400 px every name fits on its line
                breaks = name.evaluate(LINE_BREAKS_JS)
                assert breaks == [], f"{name.inner_text()} breaks at {breaks}"
            # a narrow panel: names wrap only after their `#` and `/`
            board.evaluate("b => { b.style.maxWidth = '150px'; b.querySelectorAll('td.nbr-name').forEach(c => c.style.minWidth = ''); }")
            narrow = {name.inner_text(): name.evaluate(LINE_BREAKS_JS) for name in board.locator("td.nbr-name").all()}
            assert narrow["sim#default/model-a"], narrow  # it did have to wrap
            assert all(pair[0] in "#/" for breaks in narrow.values() for pair in breaks), narrow
            board.evaluate("b => { b.style.maxWidth = ''; }")
            # with the panel open, the notebook's attempt notes still break between words only
            note = out.locator("table.nbr-attempts tbody tr").first.locator("td").last
            breaks = note.evaluate(LINE_BREAKS_JS)
            assert not [b for b in breaks if MID_WORD.match(b)], f"a note breaks mid-word: {breaks}"
            page.screenshot(path=str(ARTIFACTS / f"extension-{app}-light.png"))

            # its reset clears the cooldown; 1 error in 1 request is still "! flaky", as `%llm status` says
            row.get_by_role("button", name="reset").click()
            expect(row.locator("td").nth(1)).to_have_text(re.compile(r"^! flaky · 100% errors"))
            expect(row.get_by_role("button", name="reset")).to_be_disabled()
            expect(spend).to_have_attribute("data-health", "degraded")
            run(6)
            status_row = cells.nth(6).locator(".jp-OutputArea tr", has=page.locator("td", has_text=re.compile(r"^sim#default/model-a$")))
            expect(status_row.locator("td").nth(1)).to_have_text("! flaky")

            # every text of ours reads in the light theme, then in the dark one (issue 26: amber 2.7:1, green 4.1:1)
            assert_readable(page, READ, f"{app} light")
            set_theme(page, "JupyterLab Dark")
            page.screenshot(path=str(ARTIFACTS / f"extension-{app}-dark.png"))
            served = bars.nth(1).evaluate("b => getComputedStyle(b).backgroundColor")
            assert served not in ("", "rgba(0, 0, 0, 0)"), served
            assert_readable(page, READ, f"{app} dark")
            set_theme(page, "JupyterLab Light")

            # after a page reload the kernel still has nbrouter: the item finds its comm, and the session's total
            page.reload()
            expect(cells).to_have_count(8)
            expect(spend).to_be_visible()
            expect(spend).to_have_text(session_total)

            ours = [m for m in console if m.startswith(("error", "pageerror")) and "nbrouter" in m.lower()]
            assert ours == [], ours
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / f"extension-{app}-failure.png"), full_page=True)
            print(server["log"].read_text()[-4000:])
            print("browser console:", *console[-60:], sep="\n")
            raise
        finally:
            browser.close()


def test_format_code_run_all_twice_keeps_the_same_cells(server: dict[str, Any], sim: Any) -> None:
    from playwright.sync_api import expect

    from nbrouter.testing.behaviours import Reply

    sim.script(Reply(CODE_REPLY), model="coder", repeat_last=True)
    with _page(server, "code") as page:
        cells = _open(page, server["code_url"], 3)

        def run_all() -> None:
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            last = cells.last.locator(".jp-InputPrompt")
            expect(last).to_have_text(re.compile(r"\[\d+\]:"))
            expect(cells.last.locator(".jp-OutputArea")).to_contain_text("the end")
            page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'")

        run_all()
        # the code went into one new cell right below its cell, marked as made by it
        expect(cells).to_have_count(4)
        expect(cells.nth(2).locator(".cm-content")).to_have_text("print('written below')")
        mark = page.evaluate("() => { const m = window.jupyterapp.shell.currentWidget.content.model;"
                             " return [m.cells.get(2).getMetadata('nbrouter'), m.cells.get(1).id]; }")
        assert mark[0]["code_of"] == mark[1] and isinstance(mark[0]["run"], str), mark
        # Run All again: the same cells; the written cell, queued with its writer, did not run its code
        run_all()
        expect(cells).to_have_count(4)
        expect(cells.nth(2).locator(".jp-OutputArea")).to_contain_text("nbrouter: not run")
        expect(cells.nth(2).locator(".jp-OutputArea")).not_to_contain_text("written below")
        # run on its own, it runs
        _run(page, cells, 2)
        expect(cells.nth(2).locator(".jp-OutputArea")).to_have_text(re.compile(r"^\s*written below\s*$"))
        expect(cells).to_have_count(4)


# ---- the shared state down, in the status item and the board --------------------------------------------


def _down_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("%load_ext nbrouter"), nbformat.v4.new_code_cell("%%llm solo\nhello")]
    nbformat.write(nb, str(path))


@pytest.fixture(params=["lab", "notebook"])
def down_server(request: pytest.FixtureRequest, sim: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A config whose shared state is a Redis URL where nothing listens: down from the start."""
    import socket

    from nbrouter.testing.behaviours import Reply

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim.script(Reply("hello back", usage={"input_tokens": 10, "output_tokens": 10}), model="model-a")
    config = (_sim_provider(sim) + '[combos.solo]\ntargets = ["sim/model-a"]\n\n'
              f'[state]\nurl = "redis://127.0.0.1:{port}/0"\ntimeout_s = 0.2\n')
    with _serving(request.param, tmp_path, config, {"down.ipynb": _down_notebook}) as served:
        yield {**served, "url": served["url"]["down.ipynb"]}


def test_the_status_item_and_the_board_say_the_shared_state_is_down(down_server: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    with _page(down_server, "down") as page:
        cells = _open(page, down_server["url"], 2)
        spend = page.locator(".nbr-spend-item")
        _run(page, cells, 0)
        _run(page, cells, 1)
        expect(cells.nth(1).locator(".jp-OutputArea")).to_contain_text("hello back")  # the call went on
        # after the result the item asks for the status: the store's mode comes with it
        expect(spend).to_have_attribute("data-store", "local")
        expect(spend).to_have_text("cost unknown · 1 call · shared state down: paced here alone")  # (no price)
        assert "The shared state (Redis at redis://127.0.0.1:" in (spend.get_attribute("title") or "")
        spend.click()
        board = page.locator("#nbrouter-board")
        expect(board.locator(".nbr-board-summary")).to_contain_text("shared state down: paced here alone")
        expect(board.locator(".nbr-board-warning")).to_contain_text("is not answering")
