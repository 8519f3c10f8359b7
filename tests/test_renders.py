"""Issue 21: the renders of the router's values are compared whole, as rich's tests do: the text, Markdown
and HTML of an attempt table, a decision and a status, from fixed data on a ManualClock, against the
expected output written out below. A change of layout shows here as a diff.

The values come through the real code paths (`Router.explain`, `Router.status` over a router whose state
was set on the clock); nothing is sent (the providers' URLs are never called).
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Iterator

import pytest

from nbrouter import Action, Attempt, Decision, ErrorKind, RouteResult, Router, Usage
from nbrouter.router import Status, attempt_table
from nbrouter.router.types import decision_table
from nbrouter.testing import ManualClock

CONFIG = {
    "providers": {
        "fast": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "SIM_KEY",
                 "models": ["small", "tiny"], "quota": {"requests_per_minute": 20}},
        "deep": {"protocol": "anthropic", "base_url": "http://127.0.0.1:9", "api_key_env": "DEEP_KEY", "models": ["large"]},
    },
    "prices": {"fast/small": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}},
    "combos": {"everyday": {"targets": ["fast/small", "deep/large", "fast/tiny"]}},
}
#: a provider's message longer than the attempt table's note column (NOTE_WIDTH)
LONG_MESSAGE = ("rate limited: Rate limit reached for requests per minute on the default project of this organization; "
                "please retry after 30 seconds")


def make() -> tuple[ManualClock, Router]:
    """A router on a ManualClock whose state says: fast/small cools down for 30 s after a 429 (one call
    served, one rate-limited), deep/large's breaker is open, the fast account used 1 request of 42 tokens."""
    clock = ManualClock()
    router = Router(CONFIG, persist=False, clock=clock)
    now, state = clock.time(), router.state
    state.set_hold("fast#default/small", "cooldown", now + 30, "rate limited (429)")
    for _ in range(5):
        state.breaker_failure("deep#default/large", now)
    state.record_outcome("fast#default/small", now, ok=True, latency_s=0.2, ttft_s=None, streamed=False, cost=0.0001, error=None)
    state.record_outcome("fast#default/small", now, ok=False, latency_s=0.4, ttft_s=None, streamed=False, cost=None,
                         error=ErrorKind.RATE_LIMIT)
    state.record_usage("fast#default", now, 42)
    return clock, router


def attempt_values(now: float) -> tuple[list[Attempt], RouteResult]:
    """One call's attempts (a 429 with a long message, a skip, the answer) and its result."""
    attempts = [
        Attempt(candidate="fast#default/small", path="everyday > fast#default/small", action=Action.ADVANCE, started_at=now,
                kind=ErrorKind.RATE_LIMIT, status=429, message=LONG_MESSAGE, latency_s=0.212, hold="cooldown",
                hold_until=now + 30),
        Attempt(candidate="deep#default/large", path="everyday > deep#default/large", action=Action.SKIPPED, started_at=now,
                message="breaker open (30 s left)", hold_until=now + 30),
        Attempt(candidate="fast#default/tiny", path="everyday > fast#default/tiny", action=Action.SERVED,
                started_at=now + 0.25, status=200, latency_s=1.5, usage=Usage(12, 30), cost_usd=Decimal("0.000153")),
    ]
    result = RouteResult(text="hi", served_by="fast#default/tiny", model="tiny", combo="everyday", attempts=attempts,
                         usage=Usage(12, 30), cost_usd=Decimal("0.000153"), latency_s=1.712, ttft_s=None)
    return attempts, result


def decision(router: Router) -> Decision:
    """`explain` with a fixed seed, its policy constants cut to three (the whole set is a screenful that
    grows with the policy)."""
    d = router.explain("everyday", "hi", seed=7)
    return dataclasses.replace(d, constants={"breaker_open_s": 30.0, "max_attempts": 10,
                                             "retries": {"rate_limit": 0, "invalid_output": 1}})


def status(router: Router) -> Status:
    """The status the router reports now, on its clock."""
    return router.status()


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Router]:
    monkeypatch.delenv("DEEP_KEY", raising=False)  # the deep account's key is missing
    _, router = make()
    yield router
    router.close()


def test_an_attempt_table_renders_whole_as_text_markdown_and_html() -> None:
    now = ManualClock().time()
    attempts, result = attempt_values(now)
    table = attempt_table(attempts, now)
    assert table.text() == ATTEMPTS_TEXT
    assert table.markdown() == ATTEMPTS_MARKDOWN
    assert table.html() == ATTEMPTS_HTML
    assert attempt_table(attempts, now, compact=True).text(80) == ATTEMPTS_COMPACT_80
    assert result.footer() == FOOTER


def test_a_decision_renders_whole_as_text_markdown_and_html(routed: Router) -> None:
    d = decision(routed)
    assert str(d) == DECISION_TEXT
    assert d.table() == DECISION_FULL
    assert decision_table(d).markdown() == DECISION_MARKDOWN
    assert d._repr_html_() == DECISION_HTML


def test_a_status_renders_whole_as_text_markdown_and_html(routed: Router) -> None:
    s = status(routed)
    assert str(s) == STATUS_TEXT
    assert s.tables().markdown() == STATUS_MARKDOWN
    assert s._repr_html_() == STATUS_HTML


# ---- the expected renders (written out whole; the cells' trailing spaces are tabulate's padding) ----------


ATTEMPTS_TEXT = (
    '  #  candidate (of everyday)    action    kind          status    latency    tokens       cost  note\n'
    '---  -------------------------  --------  ----------  --------  ---------  --------  ---------  ------------------------------------------------------------------------------------------------------------------------\n'
    '  1  fast#default/small         advance   rate_limit       429     212 ms                       [cooldown 30 s] rate limited: Rate limit reached for requests per minute on the default project of this organization; p…\n'
    '  2  deep#default/large         skipped                                                         breaker open (30 s left)\n'
    '  3  fast#default/tiny          served                     200    1500 ms     12+30  $0.000153'
)


ATTEMPTS_MARKDOWN = (
    '|   # | candidate (of everyday)   | action   | kind       |   status |   latency |   tokens |       cost | note                                                                                                                     |\n'
    '|----:|:--------------------------|:---------|:-----------|---------:|----------:|---------:|-----------:|:-------------------------------------------------------------------------------------------------------------------------|\n'
    '|   1 | fast#default/small        | advance  | rate_limit |      429 |    212 ms |          |            | [cooldown 30 s] rate limited: Rate limit reached for requests per minute on the default project of this organization; p… |\n'
    '|   2 | deep#default/large        | skipped  |            |          |           |          |            | breaker open (30 s left)                                                                                                 |\n'
    '|   3 | fast#default/tiny         | served   |            |      200 |   1500 ms |    12+30 | \\$0.000153 |                                                                                                                          |'
)


ATTEMPTS_HTML = (
    "<table class='nbrouter-table' style='border-collapse:collapse;white-space:nowrap'><thead>"
    "<tr><th style='text-align:right'>#</th><th style='text-align:left'>candidate (of everyday)</th><th style='text-align:left'>action</th><th style='text-align:left'>kind</th><th style='text-align:right'>status</th><th style='text-align:right'>latency</th><th style='text-align:right'>tokens</th><th style='text-align:right'>cost</th><th style='text-align:left'>note</th></tr></thead><tbody>"
    "<tr><td style='text-align:right'>1</td><td style='text-align:left'>fast#default/small</td><td style='text-align:left'>advance</td><td style='text-align:left'>rate_limit</td><td style='text-align:right'>429</td><td style='text-align:right'>212 ms</td><td style='text-align:right'></td><td style='text-align:right'></td><td style='text-align:left;white-space:normal'>"
    '<details><summary>[cooldown 30 s] rate limited: Rate limit reached for requests per minute on the default project of this organization; p…</summary>[cooldown 30 s] rate limited: Rate limit reached for requests per minute on the default project of this organization; please retry after 30 seconds</details></td></tr>'
    "<tr><td style='text-align:right'>2</td><td style='text-align:left'>deep#default/large</td><td style='text-align:left'>skipped</td><td style='text-align:left'></td><td style='text-align:right'></td><td style='text-align:right'></td><td style='text-align:right'></td><td style='text-align:right'></td><td style='text-align:left;white-space:normal'>breaker open (30 s left)</td></tr>"
    "<tr><td style='text-align:right'>3</td><td style='text-align:left'>fast#default/tiny</td><td style='text-align:left'>served</td><td style='text-align:left'></td><td style='text-align:right'>200</td><td style='text-align:right'>1500 ms</td><td style='text-align:right'>12+30</td><td style='text-align:right'><span>$</span>0.000153</td><td style='text-align:left;white-space:normal'></td></tr>"
    '</tbody></table>'
)


ATTEMPTS_COMPACT_80 = (
    'candidate (of everyday)    outcome                     latency  note\n'
    '-------------------------  ------------------------  ---------  ----------------\n'
    'fast#default/small         advance (rate_limit 429)     212 ms  [cooldown 30 s]\n'
    '                                                                rate limited:\n'
    '                                                                Rate limit\n'
    '                                                                reached for\n'
    '                                                                requests per\n'
    '                                                                minute on the\n'
    '                                                                default project\n'
    '                                                                of this\n'
    '                                                                organization; p…\n'
    'deep#default/large         skipped                              breaker open (30\n'
    '                                                                s left)\n'
    'fast#default/tiny          served (200)                1500 ms'
)


FOOTER = (
    'served by fast#default/tiny · 2 attempts · 42 tokens · $0.000153 · 1.71 s'
)


DECISION_TEXT = (
    "combo 'everyday' · strategy priority · accounts round-robin · seed 7 · config ac37d1df581b\n"
    '  order  candidate (of everyday)             why                                           inputs\n'
    '-------  -------------------------  -------  --------------------------------------------  --------\n'
    '      1  fast#default/tiny          try      first\n'
    '      -  fast#default/small         skipped  cooling down: rate limited (429) (30 s left)\n'
    '      -  deep#default/large         skipped  breaker open (30 s left)\n'
    'estimated prompt 5 tokens + max_tokens 1024; max_attempts 10; fallback_on default; retries invalid_output 1\n'
    'policy: 3 constants, in decision.constants'
)


DECISION_FULL = (
    "combo 'everyday' · strategy priority · accounts round-robin · seed 7 · config ac37d1df581b\n"
    '  order  candidate (of everyday)             why                                           inputs\n'
    '-------  -------------------------  -------  --------------------------------------------  --------\n'
    '      1  fast#default/tiny          try      first\n'
    '      -  fast#default/small         skipped  cooling down: rate limited (429) (30 s left)\n'
    '      -  deep#default/large         skipped  breaker open (30 s left)\n'
    'estimated prompt 5 tokens + max_tokens 1024; max_attempts 10; fallback_on default; retries invalid_output 1\n'
    'policy: breaker_open_s=30; max_attempts=10; retries={rate_limit: 0, invalid_output: 1}'
)


DECISION_MARKDOWN = (
    "**combo 'everyday' · strategy priority · accounts round-robin · seed 7 · config ac37d1df581b**\n"
    '\n'
    '|   order | candidate (of everyday)   |         | why                                          | inputs   |\n'
    '|--------:|:--------------------------|:--------|:---------------------------------------------|:---------|\n'
    '|       1 | fast#default/tiny         | try     | first                                        |          |\n'
    '|       - | fast#default/small        | skipped | cooling down: rate limited (429) (30 s left) |          |\n'
    '|       - | deep#default/large        | skipped | breaker open (30 s left)                     |          |\n'
    '\n'
    'estimated prompt 5 tokens + max_tokens 1024; max_attempts 10; fallback_on default; retries invalid_output 1  '
)


DECISION_HTML = (
    "<div class='nbrouter-tables'><div><b>combo &#x27;everyday&#x27; · strategy priority · accounts round-robin · seed 7 · config ac37d1df581b</b></div><table class='nbrouter-table' style='border-collapse:collapse;white-space:nowrap'><thead>"
    "<tr><th style='text-align:right'>order</th><th style='text-align:left'>candidate (of everyday)</th><th style='text-align:left'></th><th style='text-align:left'>why</th><th style='text-align:left'>inputs</th></tr></thead><tbody>"
    "<tr><td style='text-align:right'>1</td><td style='text-align:left'>fast#default/tiny</td><td style='text-align:left'>try</td><td style='text-align:left;white-space:normal'>first</td><td style='text-align:left;white-space:normal'></td></tr>"
    "<tr><td style='text-align:right'>-</td><td style='text-align:left'>fast#default/small</td><td style='text-align:left'>skipped</td><td style='text-align:left;white-space:normal'>cooling down: rate limited (429) (30 s left)</td><td style='text-align:left;white-space:normal'></td></tr>"
    "<tr><td style='text-align:right'>-</td><td style='text-align:left'>deep#default/large</td><td style='text-align:left'>skipped</td><td style='text-align:left;white-space:normal'>breaker open (30 s left)</td><td style='text-align:left;white-space:normal'></td></tr>"
    '</tbody></table><div>estimated prompt 5 tokens + max_tokens 1024; max_attempts 10; fallback_on default; retries invalid_output 1</div></div>'
    "<details><summary>policy: 3 constants</summary><div style='white-space:pre-wrap'>policy: breaker_open_s=30; max_attempts=10; retries={rate_limit: 0, invalid_output: 1}</div></details>"
)


# `used` of an account with a quota is what every process counted, read from the shared store; this
# set-up writes its usage to the local state only, so the store counts none (headroom reads the local)
STATUS_TEXT = (
    'candidates\n'
    'candidate           health          breaker    cooldown / lock                              p50     p95    requests    errors       cost  last error\n'
    '------------------  --------------  ---------  ----------------------------------------  ------  ------  ----------  --------  ---------  ------------\n'
    'fast#default/small  ! cooling down  closed     cooldown: rate limited (429) · 0:30 left  200 ms  200 ms           2       50%  $0.000100  rate_limit\n'
    'fast#default/tiny   · no calls yet  closed                                                                        0        0%  $0.000000\n'
    'deep#default/large  ✗ breaker open  open                                                                          0        0%  $0.000000\n'
    '\n'
    'accounts\n'
    'account       health         key      tier    cooldown / lock    used (min/day)     quota       remaining      headroom\n'
    '------------  -------------  -------  ------  -----------------  -----------------  ----------  -----------  ----------\n'
    'fast#default  ✓ healthy      set                                 0/0 req · 0/0 tok  20 req/min                      95%\n'
    'deep#default  ✗ key missing  MISSING                             0/0 req · 0/0 tok  not set'
)


STATUS_MARKDOWN = (
    '**candidates**\n'
    '\n'
    '| candidate          | health         | breaker   | cooldown / lock                          |    p50 |    p95 |   requests |   errors |       cost | last error   |\n'
    '|:-------------------|:---------------|:----------|:-----------------------------------------|-------:|-------:|-----------:|---------:|-----------:|:-------------|\n'
    '| fast#default/small | ! cooling down | closed    | cooldown: rate limited (429) · 0:30 left | 200 ms | 200 ms |          2 |      50% | \\$0.000100 | rate_limit   |\n'
    '| fast#default/tiny  | · no calls yet | closed    |                                          |        |        |          0 |       0% | \\$0.000000 |              |\n'
    '| deep#default/large | ✗ breaker open | open      |                                          |        |        |          0 |       0% | \\$0.000000 |              |\n'
    '\n'
    '**accounts**\n'
    '\n'
    '| account      | health        | key     | tier   | cooldown / lock   | used (min/day)    | quota      | remaining   |   headroom |\n'
    '|:-------------|:--------------|:--------|:-------|:------------------|:------------------|:-----------|:------------|-----------:|\n'
    '| fast#default | ✓ healthy     | set     |        |                   | 0/0 req · 0/0 tok | 20 req/min |             |        95% |\n'
    '| deep#default | ✗ key missing | MISSING |        |                   | 0/0 req · 0/0 tok | not set    |             |            |'
)


STATUS_HTML = (
    "<div class='nbrouter-tables'><div class='nbrouter-tables'><div><b>candidates</b></div><table class='nbrouter-table' style='border-collapse:collapse;white-space:nowrap'><thead><tr><th style='text-align:left'>candidate</th><th style='text-align:left'>health</th><th style='text-align:left'>breaker</th><th style='text-align:left'>cooldown / lock</th><th style='text-align:right'>p50</th><th style='text-align:right'>p95</th><th style='text-align:right'>requests</th><th style='text-align:right'>errors</th><th style='text-align:right'>cost</th><th style='text-align:left'>last error</th></tr></thead><tbody><tr style='background:color-mix(in srgb, var(--jp-warn-color1, #fb8c00) 18%, transparent)'><td style='text-align:left'>fast#default/small</td><td style='text-align:left'>! cooling down</td><td style='text-align:left'>closed</td><td style='text-align:left'>cooldown: rate limited (429) · 0:30 left</td><td style='text-align:right'>200 ms</td><td style='text-align:right'>200 ms</td><td style='text-align:right'>2</td><td style='text-align:right'>50%</td><td style='text-align:right'><span>$</span>0.000100</td><td style='text-align:left;white-space:normal'>rate_limit</td></tr><tr style='background:color-mix(in srgb, var(--jp-border-color1, #bdbdbd) 18%, transparent)'><td style='text-align:left'>fast#default/tiny</td><td style='text-align:left'>· no calls yet</td><td style='text-align:left'>closed</td><td style='text-align:left'></td><td style='text-align:right'></td><td style='text-align:right'></td><td style='text-align:right'>0</td><td style='text-align:right'>0%</td><td style='text-align:right'><span>$</span>0.000000</td><td style='text-align:left;white-space:normal'></td></tr><tr style='background:color-mix(in srgb, var(--jp-error-color1, #e53935) 18%, transparent)'><td style='text-align:left'>deep#default/large</td><td style='text-align:left'>✗ breaker open</td><td style='text-align:left'>open</td><td style='text-align:left'></td><td style='text-align:right'></td><td style='text-align:right'></td><td style='text-align:right'>0</td><td style='text-align:right'>0%</td><td style='text-align:right'><span>$</span>0.000000</td><td style='text-align:left;white-space:normal'></td></tr></tbody></table></div><br><div class='nbrouter-tables'><div><b>accounts</b></div><table class='nbrouter-table' style='border-collapse:collapse;white-space:nowrap'><thead><tr><th style='text-align:left'>account</th><th style='text-align:left'>health</th><th style='text-align:left'>key</th><th style='text-align:left'>tier</th><th style='text-align:left'>cooldown / lock</th><th style='text-align:left'>used (min/day)</th><th style='text-align:left'>quota</th><th style='text-align:left'>remaining</th><th style='text-align:right'>headroom</th></tr></thead><tbody><tr style='background:color-mix(in srgb, var(--jp-success-color1, #43a047) 18%, transparent)'><td style='text-align:left'>fast#default</td><td style='text-align:left'>✓ healthy</td><td style='text-align:left'>set</td><td style='text-align:left'></td><td style='text-align:left'></td><td style='text-align:left'>0/0 req · 0/0 tok</td><td style='text-align:left'>20 req/min</td><td style='text-align:left'></td><td style='text-align:right'>95%</td></tr><tr style='background:color-mix(in srgb, var(--jp-error-color1, #e53935) 18%, transparent)'><td style='text-align:left'>deep#default</td><td style='text-align:left'>✗ key missing</td><td style='text-align:left'>MISSING</td><td style='text-align:left'></td><td style='text-align:left'></td><td style='text-align:left'>0/0 req · 0/0 tok</td><td style='text-align:left'>not set</td><td style='text-align:left'></td><td style='text-align:right'></td></tr></tbody></table></div></div>"
)

