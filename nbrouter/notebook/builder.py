"""The combo builder (`%llm builder [COMBO]`): build, reorder, validate, save, explain and test a combo.

It only calls Router methods, as the magics and the Python API do: it checks a draft with
`Router.validate_combo`, saves it with `Router.save_combo`, removes it with `Router.delete_combo`, shows
`Router.explain_combo` for the draft and tests the draft (saved or not) with `Router.stream`. It keeps no
routing state of its own.

What the builder edits lives in one traitlets model, `ComboDraft`, that its widgets are linked to, so
Python code can read and set it as well as a person can:

    builder = ComboBuilder(router)
    builder.model.name = "fast"
    builder.model.targets = ["sim/gpt-4o-mini", "sim/gpt-4.1-mini"]
    builder.save()
"""

from __future__ import annotations

import html
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import ipywidgets as w
from traitlets import Bool, Dict, Float, HasTraits, Int, List, Unicode, link

from ..router import attempt_table, decision_html
from ..router import VIRTUAL_COMBOS, Combo
from ..router import ComboConfigError
from ..router import DEFAULT_FALLBACK_ON
from ..router import FACTORS, PACKS
from ..router import ACCOUNT_STRATEGIES, STRATEGIES
from ..router import Attempt, AttemptFinished, AttemptStarted, Decision, Done, ErrorKind, RouteResult, TextDelta
from ._ui import STYLE, Kit, close_tree, note, scrolling, show_widget
from .clicks import ClickWithValues

if TYPE_CHECKING:
    from ..router import Router

#: the prompt the builder's Test button sends unless the user edits it
DEFAULT_TEST_PROMPT = "Say hello in five words."
#: a test answer is short: it shows that the combo serves, not what the model can write
TEST_MAX_TOKENS = 64
#: the test output is redrawn at most this often while an answer streams in
TEST_REDRAW_S = 0.1

#: the kinds a person can tick for `fallback_on` (a cancelled call always stops)
FALLBACK_KINDS = tuple(k for k in ErrorKind if k is not ErrorKind.CANCELLED)
DEFAULT_FALLBACK = tuple(k.value for k in FALLBACK_KINDS if k in DEFAULT_FALLBACK_ON)
DEFAULT_ACCOUNT_STRATEGY = next(iter(ACCOUNT_STRATEGIES))
#: the combo fields the builder has a control for; any other field of a loaded combo is kept as it is
EDITED_FIELDS = frozenset({"targets", "strategy", "account_strategy", "fallback_on", "sticky", "weights", "pack",
                           "retries", "hedge_after_s"})


class ComboDraft(HasTraits):
    """A combo being edited: everything the builder shows, in one model that Python can read and set."""

    name = Unicode("", help="The combo's name, used as `%%llm NAME`.")
    targets = List(Unicode(), help="The steps in order: `provider[#account]/model` targets or other combos' names.")
    strategy = Unicode("priority", help="How the steps are ordered (a name from STRATEGIES).")
    account_strategy = Unicode(DEFAULT_ACCOUNT_STRATEGY, help="How the accounts inside one target are ordered.")
    fallback_on = List(Unicode(), default_value=list(DEFAULT_FALLBACK), help="The error kinds that move on to the next target.")
    sticky = Int(1, help="round-robin: calls kept on one step before the turn moves.")
    weights = Dict(help="weighted: the weight of each step, {step: weight}; a step not named weighs 1.")
    pack = Unicode("", help="auto: the mode pack replacing the default factor weights ('' = the defaults).")
    factor_weights = Dict(help="auto: factor weights that override the pack's or the defaults, {factor: weight}.")
    retries = Dict(help="Same-target retries per error kind before moving on, {kind: count} (on top of [policy] retries).")
    hedge_after_s = Float(0.0, help="Start the next step too when the first has sent nothing after this long (0 = off).")
    options = Dict(help="The other fields of a loaded combo (max_attempts, timeout_s...), saved as they were.")
    step_options = Dict(help="Extra keys of a loaded step's inline table, {step: {key: value}}, saved as they were.")
    test_prompt = Unicode(DEFAULT_TEST_PROMPT, help="The prompt the Test button sends.")
    message = Unicode("", help="What validation says about the draft.")
    valid = Bool(False, help="The draft can be saved.")
    saved = Bool(False, help="The draft is the combo saved under its name, with no unsaved change.")
    testing = Bool(False, help="A test call is running.")

    def uses_step_weights(self) -> bool:
        """Whether the per-step weights are shown and saved: for `weighted`, or when a weight is already set."""
        return self.strategy == "weighted" or any(float(self.weights.get(t, 1.0)) != 1.0 for t in self.targets)

    def arguments(self) -> tuple[str, list[Any], dict[str, Any]]:
        """(name, targets, options) as `Router.validate_combo` and `Router.save_combo` take them."""
        targets: list[Any] = []
        step_weights = self.uses_step_weights()
        for ref in self.targets:
            extra = dict(self.step_options.get(ref, {}))
            weight = float(self.weights.get(ref, 1.0))
            if step_weights and weight != 1.0:
                extra["weight"] = _number(weight)
            targets.append({"target": ref, **extra} if extra else ref)
        options: dict[str, Any] = {k: v for k, v in self.options.items() if k not in EDITED_FIELDS}
        options["strategy"] = self.strategy
        if self.account_strategy != DEFAULT_ACCOUNT_STRATEGY:
            options["account_strategy"] = self.account_strategy
        if set(self.fallback_on) != set(DEFAULT_FALLBACK):
            known = [k.value for k in ErrorKind]
            options["fallback_on"] = sorted(set(self.fallback_on), key=lambda k: known.index(k) if k in known else len(known))
        if self.strategy == "round-robin" and self.sticky != 1:
            options["sticky"] = self.sticky
        if self.retries:
            options["retries"] = {k: int(v) for k, v in self.retries.items()}
        if self.hedge_after_s > 0:
            options["hedge_after_s"] = _number(self.hedge_after_s)
        if self.strategy == "auto":
            if self.pack:
                options["pack"] = self.pack
            if self.factor_weights:
                options["weights"] = {k: _number(float(v)) for k, v in self.factor_weights.items()}
        return self.name.strip(), targets, options

    def load_table(self, name: str, table: Mapping[str, Any]) -> None:
        """Set every field from a combo's TOML table (`config.raw["combos"][name]`)."""
        targets: list[str] = []
        weights: dict[str, float] = {}
        step_options: dict[str, dict[str, Any]] = {}
        for item in table.get("targets") or []:
            if isinstance(item, Mapping):
                ref = str(item.get("target", item.get("combo", "")))
                if "weight" in item:
                    weights[ref] = float(item["weight"])
                extra = {k: v for k, v in item.items() if k not in ("target", "combo", "weight")}
                if extra:
                    step_options[ref] = extra
            else:
                ref = str(item)
            targets.append(ref)
        fallback = table.get("fallback_on")
        with self.hold_trait_notifications():
            self.name = name
            self.targets = targets
            self.weights = weights
            self.step_options = step_options
            self.strategy = str(table.get("strategy", "priority"))
            self.account_strategy = str(table.get("account_strategy", DEFAULT_ACCOUNT_STRATEGY))
            self.fallback_on = list(DEFAULT_FALLBACK) if fallback is None else [str(k) for k in fallback]
            self.sticky = int(table.get("sticky", 1) or 1)
            self.pack = str(table.get("pack") or "")
            self.factor_weights = {str(k): float(v) for k, v in (table.get("weights") or {}).items()}
            self.retries = dict(table.get("retries") or {})
            self.hedge_after_s = float(table.get("hedge_after_s") or 0.0)
            self.options = {k: v for k, v in table.items() if k not in EDITED_FIELDS}

    def clear(self) -> None:
        """Start a new, empty draft (the test prompt is kept)."""
        with self.hold_trait_notifications():
            for name in ("name", "targets", "strategy", "account_strategy", "fallback_on", "sticky", "weights", "pack",
                         "factor_weights", "options", "step_options", "retries", "hedge_after_s"):
                self.set_trait(name, self.trait_defaults(name))


def _number(value: float) -> int | float:
    """3.0 -> 3, so that the saved file reads as the person wrote it."""
    return int(value) if float(value).is_integer() else value


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""



class ComboBuilder:
    """Build, reorder, validate, save, explain and test a combo, with every field in `model`.

    Args:
        router: the Router whose configuration the combo is saved to (the `%llm` magics' own router, so
            that a saved combo works as `%%llm NAME` at once).
        combo: the name of a saved combo to load for editing.
        model: a ComboDraft to edit (a new one by default).
    """

    def __init__(self, router: Router, combo: str | None = None, *, model: ComboDraft | None = None) -> None:
        self.router = router
        self.model = model or ComboDraft()
        self.last_result: RouteResult | None = None
        self.last_error: BaseException | None = None
        self.last_decision: Decision | None = None
        self._test_thread: threading.Thread | None = None
        #: told of each finished test call, (combo, attempts, served by or None), from the test's thread
        #: (`%llm builder` records them in the session's cost ledger)
        self.on_test: Callable[[str, list[Attempt], str | None], None] | None = None
        self._syncing = False
        self._kit = Kit()
        self._build()
        self._bind()
        if combo:
            self.load(combo)
        self.validate()

    # ---- the widgets ---------------------------------------------------------------------------

    def _build(self) -> None:
        k = self._kit
        self.title = k(w.HTML, value=STYLE + "<b>nbrouter combo builder</b>")
        self.load_choice = k(w.Dropdown, description="saved combo", options=[], value=None, style={"description_width": "initial"})
        # a button that acts on what another widget shows carries that value in its click (see ClickWithValues)
        self.load_button = k(ClickWithValues, sources={"combo": self.load_choice}, description="load",
                             tooltip="load the saved combo to edit it")
        self.new_button = k(w.Button, description="new", tooltip="start an empty draft")
        self.name = k(w.Text, description="name", placeholder="used as %%llm NAME", continuous_update=True)

        self.provider = k(w.Dropdown, description="provider", options=[])
        self.account = k(w.Dropdown, description="account", options=[])
        self.model_id = k(w.Combobox, description="model", placeholder="pick or type a model id", ensure_option=False)
        self.add_button = k(ClickWithValues, sources={"provider": self.provider, "account": self.account, "model": self.model_id},
                            description="add", tooltip="add provider/model as the last step")
        self.combo_choice = k(w.Dropdown, description="combo", options=[])
        self.add_combo_button = k(ClickWithValues, sources={"combo": self.combo_choice}, description="add combo",
                                  tooltip="add another combo as the last step")
        #: the "add a step" heading, and under it how to get a provider when there is none
        self.providers_note = k(w.HTML, value="<b>add a step</b>")
        self.reload_button = k(w.Button, description="reload config",
                               tooltip="read the config file and the environment again (a key set since, a server started since)")

        # the steps, shown once as tags in the order they are tried: drag one to move it, x to remove it; and
        # for the keyboard and a screen reader, a step picked from a dropdown and buttons that move or remove it
        self.step_tags = k(w.TagsInput, description="steps", allowed_tags=[], allow_duplicates=False,
                           placeholder="drag a step to move it", tooltip="the steps, tried in this order (left to right)")
        self.step_tags.add_class("nbrouter-steps")
        self.steps = k(w.Dropdown, description="step", options=[], tooltip="the step the buttons move or remove")
        picked = {"step": self.steps}
        self.up_button = k(ClickWithValues, sources=picked, description="up", tooltip="move the picked step up")
        self.down_button = k(ClickWithValues, sources=picked, description="down", tooltip="move the picked step down")
        self.remove_button = k(ClickWithValues, sources=picked, description="remove", tooltip="remove the picked step from the combo")
        self.weight = k(w.BoundedFloatText, min=0.0, max=1e6, step=0.5, description="weight", own_layout=True,
                        tooltip="the picked step's weight (0 = only when nothing else is left)")

        self.strategy = k(w.Dropdown, description="strategy", options=list(STRATEGIES))
        #: what the strategy does, and the fields of a loaded combo the builder keeps as they are
        self.strategy_help = k(w.HTML)
        self.sticky = k(w.BoundedIntText, description="sticky", min=1, max=1_000_000, value=1, own_layout=True,
                        tooltip="round-robin: calls kept on one step before the turn moves")
        self.pack = k(w.Dropdown, description="pack", options=[("default weights", "")] + [(p, p) for p in PACKS])
        #: the factor weights of `auto`, made the first time the strategy is auto (most combos never need them)
        self.factor_inputs: dict[str, w.BoundedFloatText] = {}
        self.factor_reset = k(w.Button, description="use pack weights", tooltip="forget the factor weights set here")
        self.auto_box = k(w.VBox, children=[self.pack], own_layout=True)
        self.account_strategy = k(w.Dropdown, description="accounts", options=list(ACCOUNT_STRATEGIES),
                                  tooltip="how the accounts of one provider/model target are ordered")
        self.fallback = k(w.TagsInput, allowed_tags=[kind.value for kind in FALLBACK_KINDS], allow_duplicates=False,
                          placeholder="add a kind")
        self.fallback_reset = k(w.Button, description="default kinds", tooltip="the spec's default fallback kinds")
        self.fallback_box = k(w.Accordion, children=[k(w.VBox, children=[self.fallback, self.fallback_reset])], selected_index=None)
        self.retries = k(w.Text, description="retries", placeholder="server_error=1, timeout=1",
                         tooltip="same-target retries per error kind before the next step (kind=count, comma-separated)")
        self.hedge = k(w.BoundedFloatText, description="hedge after", min=0.0, max=600.0, step=0.1, value=0.0,
                       tooltip="seconds without a first byte before the next step starts too (0 = off)")
        self.options_note = self.strategy_help

        self.message_html = k(w.HTML)
        self.save_button = k(w.Button, description="save", button_style="primary", tooltip="validate and write [combos.NAME] to the config file")
        self.delete_button = k(w.Button, description="delete", button_style="danger", tooltip="remove the saved combo (asks first)")
        self.confirm_button = k(w.Button, description="yes, delete", button_style="danger", layout=k.layout_of(width="auto"))
        self.cancel_button = k(w.Button, description="cancel")
        self.confirm_box = k(w.HBox, children=[self.confirm_button, self.cancel_button], own_layout=True)
        show_widget(self.confirm_box, False)
        self.status_html = k(w.HTML)

        self.prompt = k(w.Textarea, description="test prompt", rows=2, layout=k.layout_of(width="40em"))
        self.test_button = k(w.Button, description="test", tooltip="send the prompt through the saved combo")
        self.explain_button = k(w.Button, description="explain", tooltip="show the order the router would try for this draft now")
        # one place for what the last test or explain said: a newer one replaces it, an edit clears an explain
        # a wide table scrolls inside them (see _ui.scrolling)
        self.test_html = k(w.HTML)
        self.explain_html = k(w.HTML)

        self.widget = k(w.VBox, children=[
            self.title,
            k(w.HBox, children=[self.load_choice, self.load_button, self.new_button]),
            self.name,
            self.providers_note,
            k(w.HBox, children=[self.provider, self.account, self.model_id, self.add_button, self.reload_button]),
            k(w.HBox, children=[self.combo_choice, self.add_combo_button]),
            self.step_tags,
            k(w.HBox, children=[self.steps, self.up_button, self.down_button, self.remove_button, self.weight]),
            self.strategy,
            self.strategy_help,
            self.sticky,
            self.auto_box,
            self.account_strategy,
            self.fallback_box,
            k(w.HBox, children=[self.retries, self.hedge]),
            self.message_html,
            k(w.HBox, children=[self.save_button, self.delete_button]),
            self.confirm_box,
            self.status_html,
            self.prompt,
            k(w.HBox, children=[self.test_button, self.explain_button]),
            self.test_html,
            self.explain_html,
        ])
        self.widget.add_class("nbrouter-widget")
        self.refresh_choices()

    def _ensure_factor_inputs(self) -> None:
        """Make the factor weight inputs of `auto` (the first time they are needed)."""
        if self.factor_inputs:
            return
        k = self._kit
        self.factor_inputs = {f: k(w.BoundedFloatText, description=f, min=0.0, max=100.0, step=0.01,
                                   layout=k.layout_of(width="14em")) for f in FACTORS}
        for factor, box in self.factor_inputs.items():
            box.observe(lambda change, factor=factor: self._set_factor(factor, change["new"]), names="value")
        self.auto_box.children = [
            self.pack,
            k(w.HTML, value="factor weights (normalised to sum 1; a value changed here overrides the pack's):"),
            k(w.GridBox, children=list(self.factor_inputs.values()), layout=k.layout_of(grid_template_columns="repeat(3, auto)")),
            self.factor_reset,
        ]
        self._sync_factors()

    def _bind(self) -> None:
        m = self.model
        # a free text field holds any value the model can: a plain two-way link
        self._links = [
            link((m, "name"), (self.name, "value")),
            link((m, "test_prompt"), (self.prompt, "value")),
        ]
        # a dropdown refuses a value it does not list; the model may still hold it, and validation says why
        self._pair(m, "strategy", self.strategy)
        self._pair(m, "account_strategy", self.account_strategy)
        self._pair(m, "pack", self.pack)
        self._pair(m, "sticky", self.sticky)
        self._pair(m, "hedge_after_s", self.hedge)
        self.retries.observe(lambda change: self._set_retries(change["new"]), names="value")
        m.observe(lambda _: self._sync_retries(), names="retries")
        self.fallback.observe(lambda change: self._set_fallback(change["new"]), names="value")
        self.weight.observe(lambda change: self._set_weight(change["new"]), names="value")
        self.steps.observe(lambda _: self._sync_picked(), names="value")
        self.step_tags.observe(lambda change: self._set_steps(change["new"]), names="value")
        m.observe(lambda _: self._sync_fallback(), names="fallback_on")
        m.observe(lambda _: self._sync_factors(), names=["pack", "factor_weights"])
        m.observe(lambda _: self._sync_rows(), names=["targets", "strategy"])
        m.observe(lambda _: self._sync_weights(), names="weights")
        m.observe(lambda _: self._sync_sections(), names=["strategy", "options"])
        m.observe(lambda _: self._sync_buttons(), names=["valid", "saved", "testing", "message", "name"])
        m.observe(lambda _: self._draft_changed(), names=["name", "targets", "strategy", "account_strategy", "fallback_on",
                                                          "sticky", "weights", "pack", "factor_weights", "options", "step_options",
                                                          "retries", "hedge_after_s"])
        m.observe(lambda _: self.refresh_choices(), names="name")

        self.provider.observe(lambda _: self._provider_changed(), names="value")
        self.add_button.on_click(lambda v: self.add_target(v["provider"] or "", v["model"] or "", v["account"] or ""))
        self.add_combo_button.on_click(lambda v: self.add_step(v["combo"] or ""))
        self.load_button.on_click(lambda v: self.load(v["combo"] or ""))
        self.new_button.on_click(lambda _: self.new())
        self.save_button.on_click(lambda _: self.save())
        self.delete_button.on_click(lambda _: self.ask_delete())
        self.confirm_button.on_click(lambda _: self.delete())
        self.cancel_button.on_click(lambda _: self._hide_confirm())
        self.test_button.on_click(lambda _: self.test())
        self.explain_button.on_click(lambda _: self.explain())
        self.fallback_reset.on_click(lambda _: setattr(self.model, "fallback_on", list(DEFAULT_FALLBACK)))
        self.factor_reset.on_click(lambda _: setattr(self.model, "factor_weights", {}))
        self.up_button.on_click(lambda v: self._move_picked(v["step"], -1))
        self.down_button.on_click(lambda v: self._move_picked(v["step"], +1))
        self.remove_button.on_click(lambda v: self.remove(v["step"]) if v["step"] is not None else None)
        self.reload_button.on_click(lambda _: self.reload())

        self._sync_fallback()
        self._sync_factors()
        self._sync_rows()
        self._sync_sections()
        self._provider_changed()
        for name in ("strategy", "account_strategy", "pack", "sticky", "hedge_after_s"):
            self._to_widget(name)
        self._sync_retries()

    def _set_retries(self, text: str) -> None:
        """`server_error=1, timeout=1` typed in the retries field, into the model (validation names a bad kind)."""
        retries: dict[str, Any] = {}
        for part in text.split(","):
            kind, _, count = part.partition("=")
            if kind.strip():
                count = count.strip()
                retries[kind.strip()] = int(count) if count.isdigit() else count
        if retries != self.model.retries:
            self.model.retries = retries

    def _sync_retries(self) -> None:
        text = ", ".join(f"{k}={v}" for k, v in self.model.retries.items())
        parsed = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in self.retries.value.split(",")) if k.strip()}
        if {k: str(v) for k, v in self.model.retries.items()} != parsed:
            self.retries.value = text

    def _pair(self, model: ComboDraft, name: str, widget: w.ValueWidget) -> None:
        """Two-way binding that leaves the widget alone when the model holds a value it cannot show."""
        setattr(self, f"_w_{name}", widget)
        model.observe(lambda _: self._to_widget(name), names=name)
        widget.observe(lambda change: self._from_widget(name, change["new"]), names="value")

    def _to_widget(self, name: str) -> None:
        widget = getattr(self, f"_w_{name}")
        value = getattr(self.model, name)
        options = getattr(widget, "options", None)
        if options is not None and value not in [o[1] if isinstance(o, tuple) else o for o in options]:
            return
        if widget.value != value:
            widget.value = value

    def _from_widget(self, name: str, value: Any) -> None:
        if value is not None and getattr(self.model, name) != value:
            setattr(self.model, name, value)

    # ---- keeping the widgets in step with the model --------------------------------------------

    @contextmanager
    def _quietly(self) -> Iterator[None]:
        """Set widgets from the model without their change handlers writing back to the model."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def _sync_fallback(self) -> None:
        kinds = [k.value for k in FALLBACK_KINDS]
        ticked = sorted(set(self.model.fallback_on), key=lambda k: kinds.index(k) if k in kinds else len(kinds))
        default = set(ticked) == set(DEFAULT_FALLBACK)
        self.fallback_box.set_title(0, f"fall back on {len(ticked)} of {len(kinds)} error kinds"
                                       + (" (the defaults)" if default else "") + "; any other kind stops the call")
        with self._quietly():
            if list(self.fallback.value) != ticked:
                self.fallback.value = ticked

    def _set_fallback(self, kinds: Sequence[str]) -> None:
        if not self._syncing and set(kinds) != set(self.model.fallback_on):
            self.model.fallback_on = list(kinds)

    def _base_factors(self) -> dict[str, float]:
        base = PACKS.get(self.model.pack) if self.model.pack else self.router.policy.auto_weights
        return {f: float((base or {}).get(f, 0.0)) for f in FACTORS}

    def _sync_factors(self) -> None:
        if not self.factor_inputs:
            return
        base = self._base_factors()
        with self._quietly():
            for factor, box in self.factor_inputs.items():
                box.value = float(self.model.factor_weights.get(factor, base[factor]))

    def _set_factor(self, factor: str, value: float) -> None:
        if self._syncing:
            return
        weights = dict(self.model.factor_weights)
        if float(value) == self._base_factors()[factor]:
            weights.pop(factor, None)
        else:
            weights[factor] = float(value)
        self.model.factor_weights = weights

    def _sync_rows(self) -> None:
        """The steps' tags and the numbered picker, keeping the picked step picked."""
        targets = list(self.model.targets)
        picked = self.steps.value
        # one message per widget (a busy kernel makes the front end queue a widget's later messages)
        with self._quietly(), self.step_tags.hold_sync(), self.steps.hold_sync():
            # the tags offer no other step than those there: adding is the picker's job
            self.step_tags.allowed_tags = sorted(set(targets))
            self.step_tags.value = targets
            self.steps.options = [(f"{i + 1}. {ref}", i) for i, ref in enumerate(targets)]
            self.steps.value = picked if picked is not None and picked < len(targets) else (0 if targets else None)
        self._sync_picked()

    def _set_steps(self, order: Sequence[str]) -> None:
        """The tags were dragged into a new order, or one was removed: the model follows (a tag the
        model does not hold is refused, as the tags offer none)."""
        if self._syncing:
            return
        targets = list(self.model.targets)
        order = [ref for ref in order if ref in targets]
        if order != targets:
            self.model.targets = order

    def _sync_picked(self) -> None:
        """The buttons and the weight say what they would do to the picked step."""
        targets = list(self.model.targets)
        index = self.steps.value
        ref = targets[index] if index is not None and index < len(targets) else None
        self.up_button.disabled = ref is None or index == 0
        self.down_button.disabled = ref is None or index == len(targets) - 1
        self.remove_button.disabled = ref is None
        for button, what in ((self.up_button, "move {} up"), (self.down_button, "move {} down"),
                             (self.remove_button, "remove {} from the combo")):
            button.tooltip = what.format(ref) if ref else "pick a step first"
        self._sync_weights()

    def _move_picked(self, index: int | None, by: int) -> None:
        """Move step `index` (the one picked when the button was pressed) and keep it picked."""
        if index is None:
            return
        self.move(index, by)
        with self._quietly():
            self.steps.value = min(max(index + by, 0), len(self.model.targets) - 1)
        self._sync_picked()

    def _sync_weights(self) -> None:
        targets = list(self.model.targets)
        index = self.steps.value
        ref = targets[index] if index is not None and index < len(targets) else None
        with self._quietly():
            self.weight.value = float(self.model.weights.get(ref, 1.0)) if ref else 1.0
            show_widget(self.weight, ref is not None and self.model.uses_step_weights())

    def _set_weight(self, value: float) -> None:
        if self._syncing:
            return
        targets = list(self.model.targets)
        index = self.steps.value
        if index is None or index >= len(targets):
            return
        ref = targets[index]
        weights = dict(self.model.weights)
        if float(value) == 1.0:
            weights.pop(ref, None)
        else:
            weights[ref] = float(value)
        self.model.weights = weights

    def _draft_changed(self) -> None:
        """Validate the new draft; an explain of the old one would now mislead, so it goes."""
        self.explain_html.value = ""
        self.validate()

    def _sync_sections(self) -> None:
        strategy = self.model.strategy
        fn = STRATEGIES.get(strategy)
        help_ = html.escape(_first_line(fn.__doc__) if fn else f"unknown strategy {strategy!r}")
        show_widget(self.sticky, strategy == "round-robin")
        if strategy == "auto":
            self._ensure_factor_inputs()
        show_widget(self.auto_box, strategy == "auto")
        kept = {k: v for k, v in self.model.options.items() if k not in EDITED_FIELDS}
        kept_text = ("<br>other fields kept as they are: " + html.escape(" · ".join(f"{k} = {v}" for k, v in kept.items()))) if kept else ""
        self.strategy_help.value = help_ + kept_text

    def _sync_buttons(self) -> None:
        m = self.model
        self.save_button.disabled = not m.valid or m.saved
        self.save_button.description = "saved" if m.valid and m.saved else "save"
        self.save_button.tooltip = (f"cannot save: {m.message}" if not m.valid else "no unsaved change" if m.saved
                                    else "write [combos.NAME] to the config file")
        self.delete_button.disabled = m.name.strip() not in self.router.config.combos
        if m.testing:
            self.test_button.disabled, self.test_button.description = True, "testing..."
        else:
            self.test_button.description = "test"
            self.test_button.disabled = not m.valid
            self.test_button.tooltip = ("send the prompt through the combo as drafted (saved or not)" if m.valid
                                        else f"cannot test: {m.message}")
        self.explain_button.disabled = not m.valid

    def _provider_changed(self) -> None:
        provider = self.router.config.providers.get(self.provider.value or "")
        if provider is None:
            self.account.options, self.model_id.options = [], []
            return
        if len(provider.accounts) > 1:
            self.account.options = [("all accounts", "")] + [(a.name, a.name) for a in provider.accounts]
        else:  # one account: the target needs no `#account`
            self.account.options = [(a.name, "") for a in provider.accounts]
        self.account.value = ""
        models = list(provider.models)
        # models this provider already serves in saved combos are offered too
        for combo in self.router.config.combos.values():
            for step in combo.steps:
                if step.provider == provider.name and step.model and step.model not in models:
                    models.append(step.model)
        self.model_id.options = models

    def refresh_choices(self) -> None:
        """Offer the configuration's current providers (with what zero-config found) and saved combos."""
        providers = list(self.router.providers)
        config = self.router.config
        if list(self.provider.options) != providers:
            current = self.provider.value
            self.provider.options = providers
            self.provider.value = current if current in providers else (providers[0] if providers else None)
        if providers:
            self.providers_note.value = "<b>add a step</b>"
        else:
            where = config.file_label
            self.providers_note.value = "<b>add a step</b>" + note(
                "no provider yet, so there is nothing to pick: set a key in this kernel (os.environ['OPENAI_API_KEY'] = "
                f"'...', or ANTHROPIC_API_KEY, GEMINI_API_KEY...) or start a local server, then reload; or add a "
                f"[providers.NAME] table to {where}", "warn")
        saved = sorted(config.combos)
        name = self.model.name.strip()
        if list(self.load_choice.options) != saved:
            current = self.load_choice.value
            self.load_choice.options = saved
            # after a save the list names the combo being edited; otherwise what was picked stays picked
            self.load_choice.value = name if name in saved else (current if current in saved else None)
        elif name in saved and self.model.saved and self.load_choice.value != name:
            self.load_choice.value = name
        steps = [n for n in saved if n != self.model.name.strip()] + list(VIRTUAL_COMBOS)
        if list(self.combo_choice.options) != steps:
            current = self.combo_choice.value
            self.combo_choice.options = steps
            self.combo_choice.value = current if current in steps else steps[0]
        self._sync_buttons()

    def reload(self) -> None:
        """Read the configuration and the environment again (Router.reload), and offer what is there now."""
        try:
            self.router.reload()
        except ComboConfigError as exc:
            self._status(f"the configuration has a mistake: {exc}", "bad")
            return
        self.refresh_choices()
        self._provider_changed()
        self.validate()
        self._status(f"reloaded: {len(self.router.providers)} provider(s)")

    # ---- editing -------------------------------------------------------------------------------

    def add_target(self, provider: str | None = None, model: str | None = None, account: str | None = None) -> str | None:
        """Add `provider[#account]/model` (the picker's values by default) as the last step."""
        provider = provider if provider is not None else (self.provider.value or "")
        account = account if account is not None else (self.account.value or "")
        model = (self.model_id.value if model is None else model).strip()
        if not provider:
            self._status("no provider to pick: add one to the config file first", "bad")
            return None
        if not model:
            self._status("pick or type a model id first", "bad")
            return None
        target = f"{provider}#{account}/{model}" if account else f"{provider}/{model}"
        if not self.add_step(target):
            return None
        # the picker keeps what it shows: clearing it from here could wipe a model id the person is already
        # typing for the next step (their keystrokes and this write cross on the wire)
        return target

    def add_step(self, ref: str) -> bool:
        """Add a target or another combo's name as the last step; False if it is empty or already there."""
        ref = ref.strip()
        if not ref:
            return False
        if ref in self.model.targets:
            self._status(f"{ref} is already a step", "bad")
            return False
        self.model.targets = [*self.model.targets, ref]
        self._status("")
        return True

    def move(self, index: int, by: int) -> None:
        """Move step `index` up (`by` < 0) or down (`by` > 0) by that many places, stopping at either end."""
        targets = list(self.model.targets)
        if not 0 <= index < len(targets):
            return
        to = min(max(index + by, 0), len(targets) - 1)
        targets.insert(to, targets.pop(index))
        if targets != list(self.model.targets):
            self.model.targets = targets

    def remove(self, index: int) -> None:
        """Remove step `index` (its weight too)."""
        targets = list(self.model.targets)
        if not 0 <= index < len(targets):
            return
        ref = targets.pop(index)
        with self.model.hold_trait_notifications():
            self.model.targets = targets
            if ref not in targets and ref in self.model.weights:
                self.model.weights = {k: v for k, v in self.model.weights.items() if k != ref}

    def new(self) -> None:
        """Start an empty draft."""
        self.model.clear()
        self._hide_confirm()
        self.test_html.value = self.explain_html.value = ""
        self._status("new draft")

    def load(self, name: str) -> bool:
        """Load the saved combo `name` into the draft."""
        table = (self.router.config.raw.get("combos") or {}).get(name)
        if table is None:
            known = ", ".join(sorted(self.router.config.combos)) or "none saved"
            self._status(f"no saved combo named {name!r} (saved: {known})", "bad")
            return False
        self.model.load_table(name, dict(table))
        self._hide_confirm()
        self.test_html.value = self.explain_html.value = ""
        self._status(f"loaded [combos.{name}] from {self.router.config.file_label}")
        return True

    # ---- validation, saving, deleting ----------------------------------------------------------

    def draft_combo(self) -> Combo:
        """The draft as a Combo, validated by the router (raises ComboConfigError naming the field)."""
        name, targets, options = self.model.arguments()
        return self.router.validate_combo(name, targets, **options)

    def validate(self) -> bool:
        """Check the draft with Router.validate_combo; sets `model.valid`, `model.saved` and `model.message`."""
        m = self.model
        name = m.name.strip()
        saved = False
        if not name:
            valid, message = False, "name the combo: it is what you write after %%llm"
        elif any(ch.isspace() for ch in name):
            valid, message = False, f"a combo name cannot contain spaces ({name!r}): %%llm reads the first word as the name"
        else:
            try:
                combo = self.draft_combo()
            except ComboConfigError as exc:
                valid, message = False, str(exc)
            except (TypeError, ValueError) as exc:
                valid, message = False, f"{type(exc).__name__}: {exc}"
            else:
                valid = True
                existing = self.router.config.combos.get(name)
                saved = existing is not None and _same(combo, existing)
                if saved:
                    message = f"valid; saved as [combos.{name}]"
                elif existing is not None:
                    message = f"valid; not saved yet: saving replaces the saved combo {name!r}"
                else:
                    message = "valid; not saved yet"
        with m.hold_trait_notifications():
            m.valid, m.saved, m.message = valid, saved, message
        self.message_html.value = note(("✓ " if valid else "✗ cannot save: ") + message, "ok" if valid else "bad")
        self._sync_buttons()
        return valid

    def save(self) -> Combo | None:
        """Save the draft through Router.save_combo: the same validation and file writing as the Python API."""
        if not self.validate():
            self._status(f"not saved: {self.model.message}", "bad")
            return None
        name, targets, options = self.model.arguments()
        try:
            combo = self.router.save_combo(name, targets, **options)
        except ComboConfigError as exc:
            self._status(f"not saved: {exc}", "bad")
            return None
        except OSError as exc:
            self._status(f"not saved: cannot write {self.router.config.file_label}: {exc.strerror or exc}", "bad")
            return None
        where = (f"to {self.router.config.path}" if self.router.config.path is not None
                 else "in this kernel only (the router was given a dict, not a file)")
        self._status(f"saved [combos.{name}] {where}; use it as %%llm {name}", "ok")
        self.refresh_choices()
        self.validate()
        return combo

    def ask_delete(self) -> None:
        """Show the delete confirmation."""
        name = self.model.name.strip()
        if name not in self.router.config.combos:
            self._status(f"{name!r} is not a saved combo", "bad")
            return
        self._status(f"delete [combos.{name}] from {self.router.config.file_label}?", "bad")
        self.confirm_button.description = f"yes, delete {name}"
        show_widget(self.confirm_box, True)

    def _hide_confirm(self) -> None:
        show_widget(self.confirm_box, False)

    def delete(self) -> bool:
        """Delete the saved combo of the draft's name through Router.delete_combo (the draft stays)."""
        name = self.model.name.strip()
        self._hide_confirm()
        try:
            self.router.delete_combo(name)
        except ComboConfigError as exc:
            self._status(f"not deleted: {exc}", "bad")
            return False
        self._status(f"deleted [combos.{name}]; the draft is still here, unsaved", "ok")
        self.refresh_choices()
        self.validate()
        return True

    # ---- explain and test ----------------------------------------------------------------------

    def explain(self) -> Decision | None:
        """Show Router.explain_combo for the draft as it is now (saved or not); sends nothing."""
        try:
            decision = self.router.explain_combo(self.draft_combo(), self.model.test_prompt or None)
        except ComboConfigError as exc:
            self.explain_html.value = note(f"cannot explain: {exc}", "bad")
            return None
        self.last_decision = decision
        self.test_html.value = ""  # the newest answer is the only one shown
        self.explain_html.value = scrolling(decision_html(decision))
        return decision

    def test(self) -> threading.Thread | None:
        """Send the test prompt through the draft combo (saved or not) in a background thread (the kernel
        stays free).

        Returns the thread (join it to wait), or None when the draft is not valid or a test is running.
        """
        m = self.model
        if m.testing:
            return None
        try:
            draft = self.draft_combo()
        except ComboConfigError as exc:
            self.test_html.value = note(f"cannot test: {exc}", "bad")
            return None
        m.testing = True
        self.last_result = self.last_error = None
        self.explain_html.value = ""  # the newest answer is the only one shown
        self.test_html.value = note(f"sending to {m.name}...", "busy")
        thread = threading.Thread(target=self._run_test, args=(draft, m.test_prompt or DEFAULT_TEST_PROMPT),
                                  name="nbrouter-builder-test", daemon=True)
        self._test_thread = thread
        thread.start()
        return thread

    def _run_test(self, combo: Combo, prompt: str) -> None:
        text: list[str] = []
        attempts: list[Attempt] = []
        trying = ""
        drawn = 0.0
        try:
            for event in self.router.stream(combo, prompt, max_tokens=TEST_MAX_TOKENS):
                if isinstance(event, AttemptStarted):
                    trying = event.candidate
                elif isinstance(event, TextDelta):
                    text.append(event.text)
                elif isinstance(event, AttemptFinished):
                    attempts.append(event.attempt)
                elif isinstance(event, Done):
                    self.last_result, self.last_error = event.result, event.error
                    break
                now = time.monotonic()
                if now - drawn >= TEST_REDRAW_S:
                    drawn = now
                    self.test_html.value = (note(f"trying {trying}...", "busy") + _answer_html("".join(text))
                                            + (scrolling(attempt_table(attempts).html()) if attempts else ""))
        except Exception as exc:  # shown in the widget: a thread has nobody else to tell
            self.last_error = exc
        finally:
            self.test_html.value = _test_html(self.last_result, self.last_error, "".join(text), attempts)
            self.model.testing = False
            if self.on_test is not None:
                served = self.last_result.served_by if self.last_result is not None else None
                self.on_test(combo.name or "builder test", attempts, served)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a running test to finish."""
        if self._test_thread is not None:
            self._test_thread.join(timeout)

    # ---- display -------------------------------------------------------------------------------

    def _status(self, text: str, tone: str = "") -> None:
        self.status_html.value = note(text, tone) if text else ""

    def display(self) -> None:
        """Show the builder in the notebook."""
        from IPython.display import display

        display(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs))
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        m = self.model
        return (f"ComboBuilder(name={m.name!r}, targets={list(m.targets)}, strategy={m.strategy!r}, valid={m.valid}, "
                f"saved={m.saved}) (the widgets need JupyterLab or Notebook 7)")

    def close(self) -> None:
        """Close every widget of the builder."""
        for link_ in self._links:
            link_.unlink()
        close_tree(self.widget)
        self._kit.close()


def _same(draft: Combo, saved: Combo) -> bool:
    """A draft equals the saved combo; an unset `fallback_on` is the default set."""
    def norm(c: Combo) -> Combo:
        return replace(c, fallback_on=DEFAULT_FALLBACK_ON if c.fallback_on is None else c.fallback_on)

    return norm(draft) == norm(saved)



def _answer_html(text: str) -> str:
    return f"<pre style='white-space:pre-wrap;margin:4px 0'>{html.escape(text)}</pre>" if text else ""


def _test_html(result: RouteResult | None, error: BaseException | None, text: str, attempts: Sequence[Attempt]) -> str:
    if result is not None and error is None:
        return (note(result.footer(), "ok") + _answer_html(result.text)
                + f"<div>cost: {html.escape(result.cost_text)}</div>" + scrolling(attempt_table(result.attempts).html()))
    summary = "test failed" if error is None else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    shown = list(getattr(error, "attempts", None) or attempts)
    partial = result.text if result is not None else text
    return note(summary, "bad") + _answer_html(partial) + (scrolling(attempt_table(shown).html()) if shown else "")



__all__ = ["ComboBuilder", "ComboDraft", "DEFAULT_FALLBACK", "DEFAULT_TEST_PROMPT"]
