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
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import ipywidgets as w
from traitlets import Bool, Dict, HasTraits, Int, List, Unicode, link

from ..router import views
from ..router.config import VIRTUAL_COMBOS, Combo
from ..router.errors import ComboConfigError
from ..router.policy import DEFAULT_FALLBACK_ON
from ..router.packs import FACTORS, PACKS
from ..router.strategies import ACCOUNT_STRATEGIES, STRATEGIES
from ..router.types import AttemptFinished, AttemptStarted, Done, ErrorKind, TextDelta
from ._ui import STYLE, close_tree, note, show_widget

if TYPE_CHECKING:
    from ..router.engine import Router
    from ..router.types import Attempt, Decision, RouteResult

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
EDITED_FIELDS = frozenset({"targets", "strategy", "account_strategy", "fallback_on", "sticky", "weights", "pack"})


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
            self.options = {k: v for k, v in table.items() if k not in EDITED_FIELDS}

    def clear(self) -> None:
        """Start a new, empty draft (the test prompt is kept)."""
        with self.hold_trait_notifications():
            for name in ("name", "targets", "strategy", "account_strategy", "fallback_on", "sticky", "weights", "pack",
                         "factor_weights", "options", "step_options"):
                self.set_trait(name, self.trait_defaults(name))


def _number(value: float) -> int | float:
    """3.0 -> 3, so that the saved file reads as the person wrote it."""
    return int(value) if float(value).is_integer() else value


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""



class _StepRow:
    """One step of the draft, with buttons that work from a keyboard and a screen reader."""

    def __init__(self, builder: ComboBuilder, index: int, ref: str, last: bool) -> None:
        self.ref = ref
        self.label = w.Label(f"{index + 1}. {ref}", layout=w.Layout(min_width="16em"))
        self.up = w.Button(description="up", tooltip=f"move {ref} up", disabled=index == 0, layout=w.Layout(width="4.5em"))
        self.down = w.Button(description="down", tooltip=f"move {ref} down", disabled=last, layout=w.Layout(width="4.5em"))
        self.remove = w.Button(description="remove", tooltip=f"remove {ref} from the combo", layout=w.Layout(width="6em"))
        self.weight = w.BoundedFloatText(value=float(builder.model.weights.get(ref, 1.0)), min=0.0, max=1e6, step=0.5,
                                         description="weight", tooltip=f"weight of {ref} (0 = only when nothing else is left)",
                                         layout=w.Layout(width="11em"))
        show_widget(self.weight, builder.model.uses_step_weights())
        self.up.on_click(lambda _: builder.move(index, -1))
        self.down.on_click(lambda _: builder.move(index, +1))
        self.remove.on_click(lambda _: builder.remove(index))
        self.weight.observe(lambda change: builder._set_weight(ref, change["new"]), names="value")
        self.box = w.HBox([self.label, self.up, self.down, self.remove, self.weight])

    def close(self) -> None:
        for widget in (self.label, self.up, self.down, self.remove, self.weight, self.box):
            widget.close()


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
        self._syncing = False
        self._rows: list[_StepRow] = []
        self._build()
        self._bind()
        if combo:
            self.load(combo)
        self.validate()

    # ---- the widgets ---------------------------------------------------------------------------

    def _build(self) -> None:
        self.title = w.HTML(STYLE + "<b>nbrouter combo builder</b>")
        self.load_choice = w.Dropdown(description="saved combo", options=[], value=None, style={"description_width": "initial"})
        self.load_button = w.Button(description="load", tooltip="load the saved combo to edit it")
        self.new_button = w.Button(description="new", tooltip="start an empty draft")
        self.name = w.Text(description="name", placeholder="used as %%llm NAME", continuous_update=True)

        self.provider = w.Dropdown(description="provider", options=[])
        self.account = w.Dropdown(description="account", options=[])
        self.model_id = w.Combobox(description="model", placeholder="pick or type a model id", ensure_option=False)
        self.add_button = w.Button(description="add", tooltip="add provider/model as the last step")
        self.combo_choice = w.Dropdown(description="combo", options=[])
        self.add_combo_button = w.Button(description="add combo", tooltip="add another combo as the last step")

        self.tags = w.TagsInput(description="steps", allow_duplicates=False, placeholder="drag to reorder")
        self.rows_box = w.VBox([])

        self.strategy = w.Dropdown(description="strategy", options=list(STRATEGIES))
        self.strategy_help = w.HTML()
        self.sticky = w.BoundedIntText(description="sticky", min=1, max=1_000_000, value=1,
                                       tooltip="round-robin: calls kept on one step before the turn moves")
        self.pack = w.Dropdown(description="pack", options=[("default weights", "")] + [(p, p) for p in PACKS])
        self.factor_inputs = {f: w.BoundedFloatText(description=f, min=0.0, max=100.0, step=0.01, layout=w.Layout(width="14em"),
                                                    style={"description_width": "7em"}) for f in FACTORS}
        self.factor_reset = w.Button(description="use pack weights", tooltip="forget the factor weights set here",
                                     layout=w.Layout(width="auto"))
        self.auto_box = w.VBox([
            self.pack,
            w.HTML("factor weights (normalised to sum 1; a value changed here overrides the pack's):"),
            w.GridBox(list(self.factor_inputs.values()), layout=w.Layout(grid_template_columns="repeat(3, auto)")),
            self.factor_reset,
        ])
        self.account_strategy = w.Dropdown(description="accounts", options=list(ACCOUNT_STRATEGIES),
                                           tooltip="how the accounts of one provider/model target are ordered")
        self.fallback = {k.value: w.Checkbox(description=k.value, indent=False, layout=w.Layout(width="13em")) for k in FALLBACK_KINDS}
        self.fallback_reset = w.Button(description="default kinds", tooltip="the spec's default fallback kinds")
        self.options_note = w.HTML()

        self.message_html = w.HTML()
        self.save_button = w.Button(description="save", button_style="primary", tooltip="validate and write [combos.NAME] to the config file")
        self.delete_button = w.Button(description="delete", button_style="danger", tooltip="remove the saved combo (asks first)")
        self.confirm_html = w.HTML()
        self.confirm_button = w.Button(description="yes, delete", button_style="danger")
        self.cancel_button = w.Button(description="cancel")
        self.confirm_box = w.HBox([self.confirm_html, self.confirm_button, self.cancel_button])
        show_widget(self.confirm_box, False)
        self.status_html = w.HTML()

        self.prompt = w.Textarea(description="test prompt", rows=2, layout=w.Layout(width="40em"))
        self.test_button = w.Button(description="test", tooltip="send the prompt through the saved combo")
        self.explain_button = w.Button(description="explain", tooltip="show the order the router would try for this draft now")
        self.test_html = w.HTML()
        self.explain_html = w.HTML()

        self.widget = w.VBox([
            self.title,
            w.HBox([self.load_choice, self.load_button, self.new_button]),
            self.name,
            w.HTML("<b>add a step</b>"),
            w.HBox([self.provider, self.account, self.model_id, self.add_button]),
            w.HBox([self.combo_choice, self.add_combo_button]),
            w.HTML("<b>steps</b>, tried in this order (drag a tag, or use the buttons)"),
            self.tags,
            self.rows_box,
            w.HTML("<b>routing</b>"),
            w.HBox([self.strategy, self.strategy_help]),
            self.sticky,
            self.auto_box,
            self.account_strategy,
            w.HTML("fall back on these error kinds (an unticked kind stops the call):"),
            w.GridBox(list(self.fallback.values()), layout=w.Layout(grid_template_columns="repeat(4, auto)")),
            self.fallback_reset,
            self.options_note,
            self.message_html,
            w.HBox([self.save_button, self.delete_button]),
            self.confirm_box,
            self.status_html,
            w.HTML("<b>try it</b>"),
            self.prompt,
            w.HBox([self.test_button, self.explain_button]),
            self.test_html,
            self.explain_html,
        ])
        self.widget.add_class("nbrouter-widget")
        self.refresh_choices()

    def _bind(self) -> None:
        m = self.model
        # a free text field and the tag list hold any value the model can: a plain two-way link
        self._links = [
            link((m, "name"), (self.name, "value")),
            link((m, "targets"), (self.tags, "value")),
            link((m, "test_prompt"), (self.prompt, "value")),
        ]
        # a dropdown refuses a value it does not list; the model may still hold it, and validation says why
        self._pair(m, "strategy", self.strategy)
        self._pair(m, "account_strategy", self.account_strategy)
        self._pair(m, "pack", self.pack)
        self._pair(m, "sticky", self.sticky)
        for kind, box in self.fallback.items():
            box.observe(lambda change, kind=kind: self._tick(kind, change["new"]), names="value")
        for factor, box in self.factor_inputs.items():
            box.observe(lambda change, factor=factor: self._set_factor(factor, change["new"]), names="value")
        m.observe(lambda _: self._sync_fallback(), names="fallback_on")
        m.observe(lambda _: self._sync_factors(), names=["pack", "factor_weights"])
        m.observe(lambda _: self._sync_rows(), names=["targets", "strategy"])
        m.observe(lambda _: self._sync_weights(), names="weights")
        m.observe(lambda _: self._sync_sections(), names=["strategy", "options"])
        m.observe(lambda _: self._sync_buttons(), names=["valid", "saved", "testing", "message", "name"])
        m.observe(lambda _: self.validate(), names=["name", "targets", "strategy", "account_strategy", "fallback_on", "sticky",
                                                    "weights", "pack", "factor_weights", "options", "step_options"])
        m.observe(lambda _: self.refresh_choices(), names="name")

        self.provider.observe(lambda _: self._provider_changed(), names="value")
        self.add_button.on_click(lambda _: self.add_target())
        self.add_combo_button.on_click(lambda _: self.add_step(self.combo_choice.value or ""))
        self.load_button.on_click(lambda _: self.load(self.load_choice.value or ""))
        self.new_button.on_click(lambda _: self.new())
        self.save_button.on_click(lambda _: self.save())
        self.delete_button.on_click(lambda _: self.ask_delete())
        self.confirm_button.on_click(lambda _: self.delete())
        self.cancel_button.on_click(lambda _: self._hide_confirm())
        self.test_button.on_click(lambda _: self.test())
        self.explain_button.on_click(lambda _: self.explain())
        self.fallback_reset.on_click(lambda _: setattr(self.model, "fallback_on", list(DEFAULT_FALLBACK)))
        self.factor_reset.on_click(lambda _: setattr(self.model, "factor_weights", {}))

        self._sync_fallback()
        self._sync_factors()
        self._sync_rows()
        self._sync_sections()
        self._provider_changed()
        for name in ("strategy", "account_strategy", "pack", "sticky"):
            self._to_widget(name)

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
        ticked = set(self.model.fallback_on)
        with self._quietly():
            for kind, box in self.fallback.items():
                box.value = kind in ticked

    def _tick(self, kind: str, on: bool) -> None:
        if self._syncing:
            return
        current = [k for k in self.model.fallback_on if k != kind]
        self.model.fallback_on = current + [kind] if on else current

    def _base_factors(self) -> dict[str, float]:
        base = PACKS.get(self.model.pack) if self.model.pack else self.router.policy.auto_weights
        return {f: float((base or {}).get(f, 0.0)) for f in FACTORS}

    def _sync_factors(self) -> None:
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
        targets = list(self.model.targets)
        old = self._rows
        self._rows = [_StepRow(self, i, ref, i == len(targets) - 1) for i, ref in enumerate(targets)]
        self.rows_box.children = [r.box for r in self._rows]
        for row in old:
            row.close()

    def _sync_weights(self) -> None:
        show = self.model.uses_step_weights()
        with self._quietly():
            for row in self._rows:
                row.weight.value = float(self.model.weights.get(row.ref, 1.0))
                show_widget(row.weight, show)

    def _set_weight(self, ref: str, value: float) -> None:
        if self._syncing:
            return
        weights = dict(self.model.weights)
        if float(value) == 1.0:
            weights.pop(ref, None)
        else:
            weights[ref] = float(value)
        self.model.weights = weights

    def _sync_sections(self) -> None:
        strategy = self.model.strategy
        fn = STRATEGIES.get(strategy)
        self.strategy_help.value = html.escape(_first_line(fn.__doc__) if fn else f"unknown strategy {strategy!r}")
        show_widget(self.sticky, strategy == "round-robin")
        show_widget(self.auto_box, strategy == "auto")
        kept = {k: v for k, v in self.model.options.items() if k not in EDITED_FIELDS}
        self.options_note.value = ("other fields kept as they are: " + html.escape(" · ".join(f"{k} = {v}" for k, v in kept.items()))) if kept else ""

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
        """Offer the configuration's current providers and saved combos."""
        config = self.router.config
        providers = list(config.providers)
        if list(self.provider.options) != providers:
            current = self.provider.value
            self.provider.options = providers
            self.provider.value = current if current in providers else (providers[0] if providers else None)
        saved = sorted(config.combos)
        if list(self.load_choice.options) != saved:
            self.load_choice.options = saved
            self.load_choice.value = None
        steps = [n for n in saved if n != self.model.name.strip()] + list(VIRTUAL_COMBOS)
        if list(self.combo_choice.options) != steps:
            current = self.combo_choice.value
            self.combo_choice.options = steps
            self.combo_choice.value = current if current in steps else steps[0]
        self._sync_buttons()

    # ---- editing -------------------------------------------------------------------------------

    def add_target(self, provider: str | None = None, model: str | None = None, account: str | None = None) -> str | None:
        """Add `provider[#account]/model` (the picker's values by default) as the last step."""
        provider = provider if provider is not None else (self.provider.value or "")
        account = account if account is not None else (self.account.value or "")
        picked = model is None
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
        if picked:
            self.model_id.value = ""  # ready for the next one
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
        self.confirm_html.value = note(f"delete [combos.{name}] from {self.router.config.file_label}?", "bad")
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
        self.explain_html.value = views.decision_table(decision).html()
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
                                            + (views.attempt_table(attempts).html() if attempts else ""))
        except Exception as exc:  # shown in the widget: a thread has nobody else to tell
            self.last_error = exc
        finally:
            self.test_html.value = _test_html(self.last_result, self.last_error, "".join(text), attempts)
            self.model.testing = False

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
        for row in self._rows:
            row.close()
        for link_ in self._links:
            link_.unlink()
        close_tree(self.widget)



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
                + f"<div>cost: {html.escape(result.cost_text)}</div>" + views.attempt_table(result.attempts).html())
    summary = "test failed" if error is None else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    shown = list(getattr(error, "attempts", None) or attempts)
    partial = result.text if result is not None else text
    return note(summary, "bad") + _answer_html(partial) + (views.attempt_table(shown).html() if shown else "")



__all__ = ["ComboBuilder", "ComboDraft", "DEFAULT_FALLBACK", "DEFAULT_TEST_PROMPT"]
