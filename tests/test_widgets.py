"""The combo builder and the status board, driven from Python: set and read the traitlets model, click
buttons, read what the widgets show, save to and reload from a temporary config file, and test combos
against the loopback provider simulator."""

from __future__ import annotations

import os
import stat
import threading
from html import unescape
from pathlib import Path
from typing import Any, Iterator

import ipywidgets as w
import pytest

from nbrouter import Router
from nbrouter.notebook.board import StatusBoard
from nbrouter.notebook.builder import DEFAULT_FALLBACK, ComboBuilder, ComboDraft
from nbrouter.router.views import account_health, candidate_health, countdown
from nbrouter.testing import RateLimited, Reply, ServerError

CONFIG = """\
# the user's own comment, kept when the builder saves
[providers.sim]
protocol = "openai"
base_url = "{url}"
api_key_env = "SIM_KEY"
models = ["gpt-4o-mini", "gpt-4.1-mini", "claude-haiku-4-5"]

[providers.kr]
protocol = "openai"
base_url = "{url}"
models = ["llama-3.3-70b"]

[[providers.kr.accounts]]
name = "work"
api_key_env = "SIM_KEY"
tier = "pro"

[[providers.kr.accounts]]
name = "free"
api_key_env = "SIM_KEY"
tier = "free"

[combos.base]
targets = ["sim/gpt-4o-mini"]
max_attempts = 3
timeout_s = 20
"""


@pytest.fixture
def config_file(sim: Any, tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(url=sim.openai_url), encoding="utf-8")
    return path


@pytest.fixture
def router(config_file: Path, make_router: Any) -> Router:
    return make_router(config_file)


@pytest.fixture
def builder(router: Router) -> Iterator[ComboBuilder]:
    b = ComboBuilder(router)
    yield b
    b.wait(10)
    b.close()


def _all_widgets(widget: Any) -> list[Any]:
    return [widget, *(x for child in getattr(widget, "children", ()) for x in _all_widgets(child))]


def visible(widget: Any) -> bool:
    return widget.layout.display != "none"


def pick(b: ComboBuilder, model: str, provider: str = "sim", account: str = "") -> None:
    """What a person does in the target picker: choose provider and account, type a model, press add."""
    b.provider.value = provider
    b.account.value = account
    b.model_id.value = model
    b.add_button.click()


# ---- the model and the widgets are one ----------------------------------------------------------


def test_setting_the_model_from_python_updates_the_widgets(builder: ComboBuilder) -> None:
    builder.model.name = "fast"
    builder.model.targets = ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"]
    builder.model.strategy = "round-robin"
    builder.model.sticky = 3
    builder.model.fallback_on = ["rate_limit", "timeout"]

    assert builder.name.value == "fast"
    assert [label for label, _ in builder.steps.options] == ["1. sim/gpt-4o-mini", "2. sim/gpt-4.1-mini"]
    assert builder.strategy.value == "round-robin"
    assert builder.sticky.value == 3
    assert set(builder.fallback.value) == {"rate_limit", "timeout"}


def test_editing_the_widgets_updates_the_model(builder: ComboBuilder) -> None:
    builder.name.value = "fast"
    pick(builder, "gpt-4o-mini")
    pick(builder, "gpt-4.1-mini")
    builder.steps.value = 1  # pick the second step, and move it up
    builder.up_button.click()
    builder.strategy.value = "weighted"
    builder.account_strategy.value = "fill-first"
    builder.fallback.value = [*builder.fallback.value, "content_filter"]
    builder.fallback.value = [k for k in builder.fallback.value if k != "rate_limit"]
    builder.prompt.value = "Name a colour."

    m = builder.model
    assert (m.name, m.targets, m.strategy, m.account_strategy) == ("fast", ["sim/gpt-4.1-mini", "sim/gpt-4o-mini"], "weighted", "fill-first")
    assert "content_filter" in m.fallback_on and "rate_limit" not in m.fallback_on
    assert m.test_prompt == "Name a colour."


def test_a_draft_model_can_be_built_first_and_handed_to_the_builder(router: Router) -> None:
    draft = ComboDraft(name="pair", targets=["sim/gpt-4o-mini", "base"])
    b = ComboBuilder(router, model=draft)
    try:
        assert b.model is draft and draft.valid and [label for label, _ in b.steps.options] == ["1. sim/gpt-4o-mini", "2. base"]
    finally:
        b.close()


# ---- the target picker --------------------------------------------------------------------------


def test_picker_offers_providers_accounts_and_known_models(builder: ComboBuilder) -> None:
    assert list(builder.provider.options) == ["sim", "kr"]
    builder.provider.value = "sim"
    assert list(builder.model_id.options)[:3] == ["gpt-4o-mini", "gpt-4.1-mini", "claude-haiku-4-5"]
    assert builder.model_id.ensure_option is False  # any model id is accepted
    builder.provider.value = "kr"
    assert [label for label, _ in builder.account.options] == ["all accounts", "work", "free"]


def test_add_builds_provider_account_model_targets(builder: ComboBuilder) -> None:
    pick(builder, "gpt-4o-mini")
    pick(builder, "llama-3.3-70b", provider="kr", account="free")
    pick(builder, "a-model-nobody-listed")
    assert builder.model.targets == ["sim/gpt-4o-mini", "kr#free/llama-3.3-70b", "sim/a-model-nobody-listed"]
    # the kernel never writes the picker after an add: such a write could wipe what the person types next
    assert builder.model_id.value == "a-model-nobody-listed"


def browser_click(button: Any, **values: Any) -> None:
    """A click as the browser sends it: with what each source showed there, which the kernel may not have yet."""
    button._handle_custom_msg({"event": "click", "values": values}, [])


def test_quick_adds_use_the_model_ids_the_browser_showed_not_the_kernel_s(builder: ComboBuilder) -> None:
    # the browser holds the model field's newer values back until the kernel answers the first: the
    # kernel still has the first model id when the three clicks arrive
    builder.model_id.value = "gpt-4o-mini"
    sim = {"index": 0, "label": "sim"}
    one = {"index": 0, "label": "sim"}
    for model in ("gpt-4o-mini", "gpt-4.1-mini", "claude-haiku-4-5"):
        browser_click(builder.add_button, provider=sim, account=one, model={"value": model})
    assert builder.model.targets == ["sim/gpt-4o-mini", "sim/gpt-4.1-mini", "sim/claude-haiku-4-5"]
    assert "already a step" not in builder.status_html.value


def test_a_step_button_acts_on_the_step_picked_in_the_browser(builder: ComboBuilder) -> None:
    builder.model.targets = ["sim/a", "sim/b", "sim/c"]
    assert builder.steps.value == 0
    browser_click(builder.up_button, step={"index": 2, "label": "3. sim/c"})  # picked there, not yet here
    assert builder.model.targets == ["sim/a", "sim/c", "sim/b"]
    assert builder.steps.value == 1  # the moved step stays picked
    # a second quick "up" still names the old place: its label no longer matches, the kernel's pick (the
    # moved step) is used
    browser_click(builder.up_button, step={"index": 2, "label": "3. sim/c"})
    assert builder.model.targets == ["sim/c", "sim/a", "sim/b"]


def test_a_malformed_click_reads_the_kernel_s_values(builder: ComboBuilder) -> None:
    builder.model_id.value = "gpt-4o-mini"
    for values in ({"model": {"value": 5}}, {"model": "x", "provider": {"index": True, "label": "kr"}},
                   {"provider": {"index": 99, "label": "sim"}}):
        browser_click(builder.add_button, **values)
    builder.add_button._handle_custom_msg("not a dict", [])
    builder.add_button._handle_custom_msg({"event": "click", "values": ["a list"]}, [])
    assert builder.model.targets == ["sim/gpt-4o-mini"]


def test_add_refuses_a_duplicate_and_an_empty_model(builder: ComboBuilder) -> None:
    pick(builder, "gpt-4o-mini")
    pick(builder, "gpt-4o-mini")
    assert builder.model.targets == ["sim/gpt-4o-mini"]
    assert "already a step" in builder.status_html.value
    pick(builder, "  ")
    assert "pick or type a model id" in builder.status_html.value


def test_other_combos_can_be_added_as_steps(builder: ComboBuilder) -> None:
    assert "base" in builder.combo_choice.options and "auto" in builder.combo_choice.options
    builder.combo_choice.value = "base"
    builder.add_combo_button.click()
    assert builder.model.targets == ["base"]


# ---- ordering -----------------------------------------------------------------------------------


def test_up_down_and_remove_buttons_reorder_the_steps(builder: ComboBuilder) -> None:
    builder.model.targets = ["sim/a", "sim/b", "sim/c"]
    builder.steps.value = 0
    assert builder.up_button.disabled and not builder.down_button.disabled
    builder.steps.value = 2
    assert builder.down_button.disabled and builder.up_button.tooltip == "move sim/c up"
    builder.up_button.click()
    assert builder.model.targets == ["sim/a", "sim/c", "sim/b"]
    assert builder.steps.value == 1  # the moved step stays picked: press again to move it further
    builder.up_button.click()
    assert builder.model.targets == ["sim/c", "sim/a", "sim/b"]
    assert [label for label, _ in builder.steps.options] == ["1. sim/c", "2. sim/a", "3. sim/b"]
    builder.steps.value = 1
    assert builder.remove_button.tooltip == "remove sim/a from the combo"
    builder.remove_button.click()
    assert builder.model.targets == ["sim/c", "sim/b"]


def test_the_steps_are_shown_once(builder: ComboBuilder) -> None:
    builder.model.targets = ["sim/a", "sim/b"]
    values = [getattr(x, "value", "") for x in _all_widgets(builder.widget)]
    # on screen once, as the tags; the keyboard's picker lists them only when opened
    assert sum("sim/a" in str(v) for v in values) == 1 and builder.step_tags.value == ["sim/a", "sim/b"]
    assert [label for label, _ in builder.steps.options] == ["1. sim/a", "2. sim/b"]
    assert not any(isinstance(x, w.Select) for x in _all_widgets(builder.widget))


def test_dragging_a_step_tag_reorders_the_steps_and_the_buttons_still_work(builder: ComboBuilder) -> None:
    builder.model.targets = ["sim/a", "sim/b", "sim/c"]
    builder.step_tags.value = ["sim/c", "sim/a", "sim/b"]  # what a drag of sim/c to the front sends
    assert builder.model.targets == ["sim/c", "sim/a", "sim/b"]
    assert [label for label, _ in builder.steps.options] == ["1. sim/c", "2. sim/a", "3. sim/b"]
    builder.steps.value = 2
    builder.up_button.click()  # the keyboard's way keeps working, and the tags follow
    assert builder.model.targets == ["sim/c", "sim/b", "sim/a"] and builder.step_tags.value == ["sim/c", "sim/b", "sim/a"]
    builder.step_tags.value = ["sim/c", "sim/a"]  # a tag's x removes its step
    assert builder.model.targets == ["sim/c", "sim/a"]
    assert builder.step_tags.allowed_tags == ["sim/a", "sim/c"]  # the tags add no step of their own


def test_move_from_python_takes_a_step_several_places(builder: ComboBuilder) -> None:
    builder.model.targets = ["sim/a", "sim/b", "sim/c", "sim/d"]
    builder.move(3, -3)
    assert builder.model.targets == ["sim/d", "sim/a", "sim/b", "sim/c"]
    builder.move(1, +10)
    assert builder.model.targets == ["sim/d", "sim/b", "sim/c", "sim/a"]


# ---- strategy fields appear only for their strategy ---------------------------------------------


def test_strategy_fields_appear_only_when_the_strategy_needs_them(builder: ComboBuilder) -> None:
    builder.model.targets = ["sim/a", "sim/b"]
    assert not visible(builder.sticky) and not visible(builder.auto_box)
    assert not visible(builder.weight) and not builder.factor_inputs  # auto's inputs are made when needed

    builder.strategy.value = "weighted"
    assert visible(builder.weight) and not visible(builder.sticky)
    builder.strategy.value = "round-robin"
    assert visible(builder.sticky) and not visible(builder.weight)
    builder.strategy.value = "auto"
    assert visible(builder.auto_box) and not visible(builder.sticky)
    assert "multi-factor" in builder.strategy_help.value or builder.strategy_help.value


def test_every_registered_strategy_is_offered(builder: ComboBuilder) -> None:
    from nbrouter.router.decide.strategies import STRATEGIES

    assert list(builder.strategy.options) == list(STRATEGIES)


def test_weighted_steps_save_their_weights(builder: ComboBuilder, config_file: Path) -> None:
    builder.model.name = "spread"
    builder.model.targets = ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"]
    builder.strategy.value = "weighted"
    builder.steps.value = 0
    builder.weight.value = 3
    assert builder.model.weights == {"sim/gpt-4o-mini": 3.0}
    builder.save_button.click()
    assert '{target = "sim/gpt-4o-mini", weight = 3}' in config_file.read_text()
    assert builder.router.config.combos["spread"].steps[0].weight == 3.0


def test_auto_pack_and_factor_weights_are_saved(builder: ComboBuilder, config_file: Path) -> None:
    builder.model.name = "smart"
    builder.model.targets = ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"]
    builder.strategy.value = "auto"
    assert builder.factor_inputs["health"].value == pytest.approx(0.22)  # the defaults are shown
    builder.pack.value = "ship-fast"
    assert builder.factor_inputs["latency"].value == pytest.approx(0.35)  # the pack's
    builder.factor_inputs["cost"].value = 0.5
    assert builder.model.factor_weights == {"cost": 0.5}
    builder.save_button.click()
    combo = builder.router.config.combos["smart"]
    assert (combo.strategy, combo.pack, combo.weights) == ("auto", "ship-fast", {"cost": 0.5})
    builder.factor_reset.click()
    assert builder.model.factor_weights == {} and builder.factor_inputs["cost"].value == pytest.approx(0.05)


def test_round_robin_sticky_is_saved(builder: ComboBuilder) -> None:
    builder.model.name = "rr"
    builder.model.targets = ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"]
    builder.strategy.value = "round-robin"
    builder.sticky.value = 2
    builder.save()
    assert builder.router.config.combos["rr"].sticky == 2


def test_the_strategy_list_has_every_registered_strategy(builder: ComboBuilder) -> None:
    from nbrouter.router.decide.strategies import STRATEGIES

    assert list(builder.strategy.options) == list(STRATEGIES)
    assert {"strict-random", "context-relay"} <= set(builder.strategy.options)


def test_retries_and_hedging_are_saved_and_loaded_back(builder: ComboBuilder) -> None:
    builder.model.name = "careful"
    builder.model.targets = ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"]
    builder.retries.value = "server_error=1, timeout=2"
    builder.hedge.value = 0.5
    assert builder.model.retries == {"server_error": 1, "timeout": 2} and builder.model.hedge_after_s == 0.5
    builder.save()
    combo = builder.router.config.combos["careful"]
    assert combo.retries == {"server_error": 1, "timeout": 2} and combo.hedge_after_s == 0.5
    builder.new()
    assert builder.retries.value == "" and builder.hedge.value == 0.0
    builder.load("careful")
    assert builder.retries.value == "server_error=1, timeout=2" and builder.hedge.value == 0.5


def test_a_bad_retry_kind_is_refused_with_the_router_s_message(builder: ComboBuilder) -> None:
    builder.model.name = "odd"
    builder.model.targets = ["sim/gpt-4o-mini"]
    builder.retries.value = "content_filter=1"
    assert not builder.model.valid and "retries" in builder.model.message and builder.save_button.disabled


def test_fallback_kinds_save_fallback_on_and_stay_folded_away(builder: ComboBuilder) -> None:
    builder.model.name = "strict"
    builder.model.targets = ["sim/gpt-4o-mini"]
    assert set(builder.fallback.value) == set(DEFAULT_FALLBACK)
    assert builder.fallback_box.selected_index is None  # folded: one line says what it holds
    assert builder.fallback_box.get_title(0).startswith(f"fall back on {len(DEFAULT_FALLBACK)} of ")
    assert "(the defaults)" in builder.fallback_box.get_title(0)
    builder.fallback.value = [k for k in builder.fallback.value if k != "server_error"]
    assert "(the defaults)" not in builder.fallback_box.get_title(0)
    builder.save_button.click()
    kinds = {k.value for k in builder.router.config.combos["strict"].fallback_on or ()}
    assert "server_error" not in kinds and "rate_limit" in kinds
    builder.fallback_reset.click()
    assert set(builder.model.fallback_on) == set(DEFAULT_FALLBACK)


# ---- live validation ----------------------------------------------------------------------------


def test_save_is_disabled_with_the_reason_until_the_draft_is_valid(builder: ComboBuilder) -> None:
    assert builder.save_button.disabled and "name the combo" in builder.message_html.value
    builder.name.value = "fast"
    assert builder.save_button.disabled and "non-empty `targets`" in builder.model.message
    builder.model.targets = ["nowhere/gpt-4o-mini"]
    assert not builder.model.valid
    assert "unknown provider 'nowhere'" in builder.model.message and "targets[0]" in builder.model.message
    assert "unknown provider" in builder.save_button.tooltip and "cannot save" in builder.message_html.value
    builder.model.targets = ["sim/gpt-4o-mini"]
    assert builder.model.valid and not builder.save_button.disabled and "✓" in builder.message_html.value


def test_validation_names_a_cycle_with_its_whole_path(builder: ComboBuilder) -> None:
    builder.router.save_combo("outer", ["base"])
    builder.model.name = "base"
    builder.model.targets = ["outer"]
    assert not builder.model.valid
    assert "cycle: base > outer > base" in builder.model.message


def test_validation_refuses_nesting_deeper_than_the_limit(builder: ComboBuilder) -> None:
    router = builder.router
    router.save_combo("l1", ["base"])
    router.save_combo("l2", ["l1"])
    builder.model.name = "l3"
    builder.model.targets = ["l2"]
    assert not builder.model.valid and "nesting deeper than 3" in builder.model.message


def test_validation_names_an_unknown_combo_and_strategy(builder: ComboBuilder) -> None:
    builder.model.name = "x"
    builder.model.targets = ["no-such-combo"]
    assert "unknown combo 'no-such-combo'" in builder.model.message
    builder.model.targets = ["sim/gpt-4o-mini"]
    builder.model.strategy = "bogus"  # set from Python: the dropdown cannot show it, validation says why
    assert not builder.model.valid and "unknown strategy 'bogus'" in builder.model.message
    assert "unknown strategy" in builder.strategy_help.value


def test_a_name_with_spaces_is_refused(builder: ComboBuilder) -> None:
    builder.model.targets = ["sim/gpt-4o-mini"]
    builder.model.name = "my combo"
    assert not builder.model.valid and "cannot contain spaces" in builder.model.message


def test_saving_over_an_existing_combo_says_so(builder: ComboBuilder) -> None:
    builder.model.name = "base"
    builder.model.targets = ["sim/gpt-4.1-mini"]
    assert builder.model.valid and "replaces the saved combo 'base'" in builder.model.message


# ---- save, load, delete -------------------------------------------------------------------------


def test_save_writes_the_file_through_the_router_and_a_new_router_reads_it(builder: ComboBuilder, config_file: Path,
                                                                           make_router: Any) -> None:
    builder.name.value = "fast"
    pick(builder, "gpt-4o-mini")
    pick(builder, "gpt-4.1-mini")
    builder.save_button.click()

    assert "saved [combos.fast]" in builder.status_html.value and "%%llm fast" in builder.status_html.value
    text = config_file.read_text()
    assert "# the user's own comment" in text and "[combos.base]" in text
    assert stat.S_IMODE(os.stat(config_file).st_mode) == 0o600
    assert builder.model.saved and "saved as [combos.fast]" in builder.model.message
    fresh = make_router(config_file)  # a new kernel reads the file
    assert [s.ref for s in fresh.config.combos["fast"].steps] == ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"]


def test_a_saved_combo_is_usable_at_once_by_the_same_router(builder: ComboBuilder) -> None:
    builder.model.name = "fast"
    builder.model.targets = ["sim/gpt-4.1-mini"]
    builder.save()
    result = builder.router.complete("fast", "hi")
    assert result.served_by == "sim#default/gpt-4.1-mini"


def test_load_an_existing_combo_and_keep_its_other_fields(router: Router, config_file: Path) -> None:
    b = ComboBuilder(router, "base")
    try:
        assert b.model.name == "base" and b.model.targets == ["sim/gpt-4o-mini"] and b.model.saved
        assert b.model.options == {"max_attempts": 3, "timeout_s": 20}
        assert "max_attempts = 3" in b.options_note.value
        pick(b, "gpt-4.1-mini")
        assert not b.model.saved
        b.save_button.click()
        combo = router.config.combos["base"]
        assert (combo.max_attempts, combo.timeout_s) == (3, 20.0)
        assert [s.ref for s in combo.steps] == ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"]
    finally:
        b.close()


def test_load_button_and_new_button(builder: ComboBuilder) -> None:
    builder.load_choice.value = "base"
    builder.load_button.click()
    assert builder.model.targets == ["sim/gpt-4o-mini"]
    builder.new_button.click()
    assert builder.model.name == "" and builder.model.targets == [] and builder.model.options == {}
    assert not builder.load("missing") and "no saved combo named 'missing'" in unescape(builder.status_html.value)


def test_delete_asks_for_confirmation_first(router: Router, config_file: Path) -> None:
    b = ComboBuilder(router, "base")
    try:
        b.delete_button.click()
        assert "base" in router.config.combos and visible(b.confirm_box)
        assert "delete [combos.base]" in b.status_html.value and b.confirm_button.description == "yes, delete base"
        b.cancel_button.click()
        assert not visible(b.confirm_box) and "base" in router.config.combos
        b.delete_button.click()
        b.confirm_button.click()
        assert "base" not in router.config.combos and "[combos.base]" not in config_file.read_text()
        assert "deleted [combos.base]" in b.status_html.value and b.delete_button.disabled
    finally:
        b.close()


def test_delete_of_a_combo_another_uses_is_refused_with_the_reason(router: Router) -> None:
    router.save_combo("outer", ["base"])
    b = ComboBuilder(router, "base")
    try:
        b.delete_button.click()
        b.confirm_button.click()
        assert "base" in router.config.combos and "outer use it" in b.status_html.value
    finally:
        b.close()


# ---- explain and test ---------------------------------------------------------------------------


def test_explain_shows_the_decision_for_the_unsaved_draft(builder: ComboBuilder) -> None:
    builder.model.name = "draft"
    builder.model.targets = ["sim/gpt-4.1-mini", "base"]
    builder.explain_button.click()
    assert "draft" not in builder.router.config.combos
    html = builder.explain_html.value
    assert "strategy priority" in html and "sim#default/gpt-4.1-mini" in html and "base &gt; sim#default/gpt-4o-mini" in html
    assert "candidate (of draft)" in html
    assert [c.key for c in builder.last_decision.order] == ["sim#default/gpt-4.1-mini", "sim#default/gpt-4o-mini"]


def test_test_is_disabled_until_the_draft_is_valid_and_works_before_saving(builder: ComboBuilder, sim: Any) -> None:
    builder.model.name = "fast"
    builder.model.targets = ["nosuch/gpt-4o-mini"]
    assert builder.test_button.disabled and "cannot test" in builder.test_button.tooltip
    assert builder.test() is None and not sim.requests
    builder.model.targets = ["sim/gpt-4o-mini"]
    assert not builder.test_button.disabled and not builder.model.saved
    thread = builder.test()
    assert thread is not None
    builder.wait(20)
    assert builder.last_result is not None and builder.last_result.served_by == "sim#default/gpt-4o-mini"
    assert "fast" not in builder.router.combos  # nothing was saved by testing


def test_test_runs_in_the_background_and_shows_served_by_attempts_and_cost(builder: ComboBuilder, sim: Any) -> None:
    sim.script([RateLimited(retry_after=30)], model="gpt-4o-mini")
    sim.script([Reply("slow hello from the simulator", tokens_per_s=8)], model="gpt-4.1-mini")
    builder.model.name = "fast"
    builder.model.targets = ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"]
    builder.save()
    builder.prompt.value = "Say hello"

    thread = builder.test_button.click() or builder._test_thread
    # the click returned while the answer still streams (a few seconds at 8 tokens a second): the kernel is free
    assert thread is not None and thread.is_alive() and builder.last_result is None
    assert builder.model.testing and builder.test_button.disabled and builder.test_button.description == "testing..."
    builder.wait(20)

    assert not builder.model.testing and not builder.test_button.disabled
    html = builder.test_html.value
    assert "served by sim#default/gpt-4.1-mini · 2 attempts" in html
    assert "rate_limit" in html and "cooldown" in html  # the attempt log
    assert "cost: $" in html
    assert builder.last_result is not None and builder.last_result.text == "slow hello from the simulator"
    assert sim.requests[-1].body["messages"][-1]["content"] == "Say hello"


def test_a_failed_test_shows_the_error_and_every_attempt(builder: ComboBuilder, sim: Any) -> None:
    sim.script([ServerError(500)], model="gpt-4o-mini", repeat_last=True)
    builder.model.name = "down"
    builder.model.targets = ["sim/gpt-4o-mini"]
    builder.save()
    builder.test()
    builder.wait(20)
    html = builder.test_html.value
    assert "AllTargetsFailed" in html and "server_error" in html
    assert builder.last_error is not None and not builder.model.testing


def test_the_builder_has_a_readable_text_form(builder: ComboBuilder) -> None:
    builder.model.name = "fast"
    bundle = builder._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("ComboBuilder(name='fast'")


# ---- the status board ---------------------------------------------------------------------------


def _cells(board: StatusBoard, table: str, key: str) -> list[str]:
    return getattr(board, table)[key]


def _widgets(widget: Any) -> int:
    return 1 + sum(_widgets(child) for child in getattr(widget, "children", ()))


def test_status_board_lists_every_candidate_and_account(router: Router) -> None:
    router.complete("base", "hi")
    board = StatusBoard(router)
    try:
        assert "sim#default/gpt-4o-mini" in board.candidates and "sim#default/claude-haiku-4-5" in board.candidates
        assert set(board.accounts) == {"sim#default", "kr#work", "kr#free"}
        row = " ".join(_cells(board, "candidates", "sim#default/gpt-4o-mini"))
        assert "✓ healthy" in row and "closed" in row and " ms" in row and "$0.0000" in row
        assert "no calls yet" in " ".join(_cells(board, "candidates", "sim#default/gpt-4.1-mini"))
        account = " ".join(_cells(board, "accounts", "sim#default"))
        assert "set" in account and "1/1 req" in account
        assert "pro" in " ".join(_cells(board, "accounts", "kr#work"))
        # the same rows as Router.status() shows as text
        assert "✓ healthy" in str(router.status()) and "sim#default/claude-haiku-4-5" in board.tables.value
    finally:
        board.close()


def test_status_board_is_one_output_of_a_few_widgets_however_large_the_pool(router: Router) -> None:
    board = StatusBoard(router)
    try:
        assert len(board.candidates) >= 5 and _widgets(board.widget) <= 6
        before = board.tables.value
        board.refresh()
        assert board.tables.value.count("<table") == 2 and board.tables.value.split("·", 2)[2] == before.split("·", 2)[2]
    finally:
        board.close()


def test_status_board_shows_a_cooldown_with_its_countdown_in_words(router: Router, sim: Any) -> None:
    sim.script([RateLimited(retry_after=30)], model="gpt-4o-mini")
    router.save_combo("pair", ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"])
    router.complete("pair", "hi")
    board = StatusBoard(router)
    try:
        cells = _cells(board, "candidates", "sim#default/gpt-4o-mini")
        text = " ".join(cells)
        assert "! cooling down" in text  # words, not colour alone
        assert "cooldown: rate limited (429) · 0:" in text and "left" in text
        row = next(r for r in board.tables.value.split("<tr") if "sim#default/gpt-4o-mini" in r)
        assert "--jp-warn-color1" in row  # and the theme's warning colour repeats it
        assert board.reset_choice.options[0] == "sim#default/gpt-4o-mini"  # what needs a reset comes first
    finally:
        board.close()


def test_status_board_reset_clears_the_cooldown(router: Router, sim: Any) -> None:
    sim.script([RateLimited(retry_after=30)], model="gpt-4o-mini")
    router.save_combo("pair", ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"])
    router.complete("pair", "hi")
    board = StatusBoard(router)
    try:
        board.reset_choice.value = "sim#default/gpt-4o-mini"
        board.reset_button.click()
        assert "cooling down" not in " ".join(_cells(board, "candidates", "sim#default/gpt-4o-mini"))
        assert "reset sim#default/gpt-4o-mini: 1 entry cleared" in board.tables.value
        assert router.status().candidate("sim#default/gpt-4o-mini")["hold"] is None
    finally:
        board.close()


def test_status_board_refreshes_in_a_thread_until_stopped(router: Router) -> None:
    board = StatusBoard(router, interval_s=0.05)
    try:
        board.start()
        assert board.running and "refreshed every 0.05 s" in board.tables.value
        # the board's own thread redraws it: wait for the redraw that shows the call, not for a time
        healthy = threading.Event()

        def check(_: Any = None) -> None:
            if "✓ healthy" in " ".join(board.candidates.get("sim#default/gpt-4o-mini", [])):
                healthy.set()

        board.tables.observe(check, names="value")
        router.complete("base", "hi")
        check()
        assert healthy.wait(60), "the board did not refresh by itself"  # a bound against a hang only
        board.pause_button.click()
        assert not board.running and board.pause_button.description == "resume" and "paused" in board.tables.value
        board.pause_button.click()
        assert board.running
    finally:
        board.close()
    assert not board.running


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"hold": None, "breaker": "closed", "requests": 4, "errors": 0, "error_rate": 0.0}, ("healthy", "ok")),
        ({"hold": None, "breaker": "closed", "requests": 0, "errors": 0, "error_rate": 0.0}, ("no calls yet", "idle")),
        ({"hold": "cooldown", "breaker": "closed", "requests": 1, "errors": 1, "error_rate": 1.0}, ("cooling down", "warn")),
        ({"hold": "lock", "breaker": "closed", "requests": 1, "errors": 1, "error_rate": 1.0}, ("locked", "bad")),
        ({"hold": None, "breaker": "open", "requests": 5, "errors": 5, "error_rate": 1.0}, ("breaker open", "bad")),
        ({"hold": None, "breaker": "half_open", "requests": 5, "errors": 5, "error_rate": 1.0}, ("probing (half open)", "warn")),
        ({"hold": None, "breaker": "closed", "requests": 4, "errors": 1, "error_rate": 0.25}, ("flaky", "warn")),
    ],
)
def test_candidate_health_words(row: dict[str, Any], expected: tuple[str, str]) -> None:
    assert candidate_health(row) == expected


def test_a_candidate_with_tokens_at_an_unknown_price_costs_unknown_never_zero() -> None:
    from nbrouter.router.views import cost_so_far

    assert cost_so_far({"cost_usd": 0.0, "cost_unknown": 2}) == "unknown"
    assert cost_so_far({"cost_usd": 0.5, "cost_unknown": 1}) == "$0.500000 + unknown"
    assert cost_so_far({"cost_usd": 0.0}) == "$0.000000"


def test_account_health_words() -> None:
    assert account_health({"hold": "disabled", "key_set": True}) == ("disabled (key refused)", "bad")
    assert account_health({"hold": None, "key_set": False}) == ("key missing", "bad")
    assert account_health({"hold": None, "key_set": True, "headroom": 0.05}) == ("low quota", "warn")
    assert account_health({"hold": None, "key_set": None, "headroom": None}) == ("healthy", "ok")


def test_countdown() -> None:
    assert [countdown(s) for s in (None, 0, 29.6, 90, 3725)] == ["", "0:00", "0:30", "1:30", "1:02:05"]


# ---- the rough edges a new user met ---------------------------------------------------------------


def test_the_saved_combo_list_names_the_combo_just_saved(builder: ComboBuilder) -> None:
    builder.model.name = "fresh"
    builder.model.targets = ["sim/gpt-4o-mini"]
    builder.save()
    assert "fresh" in builder.load_choice.options and builder.load_choice.value == "fresh"


def test_an_explain_goes_when_the_draft_changes_and_a_test_replaces_it(builder: ComboBuilder) -> None:
    builder.model.name = "pair"
    builder.model.targets = ["sim/gpt-4o-mini"]
    builder.explain()
    assert "sim#default/gpt-4o-mini" in builder.explain_html.value
    builder.model.targets = ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"]
    assert builder.explain_html.value == ""  # it described the old draft
    builder.explain()
    builder.test()
    builder.wait(20)
    assert builder.explain_html.value == "" and "served by" in builder.test_html.value


def test_with_no_provider_the_builder_says_how_to_add_one_and_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBROUTER_CONFIG", str(tmp_path / "none.toml"))
    router = Router(state_path=tmp_path / "s.db")
    b = ComboBuilder(router)
    try:
        assert list(b.provider.options) == []
        assert "no provider yet" in b.providers_note.value and "OPENAI_API_KEY" in b.providers_note.value
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-builder-reload-1")  # set in the kernel, after the builder opened
        b.reload_button.click()
        assert "openai" in b.provider.options and "no provider" not in b.providers_note.value
        assert "sk-test-builder-reload-1" not in repr(b._repr_mimebundle_())
    finally:
        b.close()
        router.close()
