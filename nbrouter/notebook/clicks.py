"""A button whose click carries the values the person saw in other widgets (the builder's "add", "up"...).

ipywidgets' Button sends a bare click. The browser sends a widget's new value at once only when the kernel
has answered its previous one; until then it holds the newest back and sends it later (quick input, or a
kernel busy with a cell). A click handler that reads a text field or a dropdown in the kernel can then read
a value from before the person's last edit: three quick "add"s added the first model and refused it twice
as "already a step". `ClickWithValues` reads the sources in the browser when it is pressed (the browser's
copy of a widget is current at once) and sends them with the click, through anywidget, which JupyterLab,
Notebook 7, VS Code and Colab all load.
"""

from __future__ import annotations

from typing import Any, Callable

import anywidget
from traitlets import Bool, Dict, Unicode


#: the browser side of ClickWithValues: a button like ipywidgets' own whose click message carries what each
#: source widget shows in the browser at that moment (a selection as its index and label, anything else as
#: its value), read from the browser's copy of the source's model, which is current at once
_CLICK_WITH_VALUES_ESM = """
async function render({ model, el }) {
  const button = document.createElement('button');
  button.className = 'jupyter-widgets jupyter-button widget-button';
  let sources = {};
  const resolve = async () => {
    const found = {};
    for (const [name, id] of Object.entries(model.get('sources'))) {
      found[name] = await model.widget_manager.get_model(id);
    }
    sources = found;
  };
  const show = () => {
    button.textContent = model.get('description');
    button.title = model.get('tooltip');
    button.disabled = model.get('disabled');
  };
  await resolve();
  show();
  model.on('change:sources', resolve);
  model.on('change:description', show);
  model.on('change:tooltip', show);
  model.on('change:disabled', show);
  button.addEventListener('click', (event) => {
    event.preventDefault();
    const values = {};
    for (const [name, source] of Object.entries(sources)) {
      const index = source.get('index');
      values[name] = index === undefined ? { value: source.get('value') }
        : { index, label: index === null ? null : source.get('_options_labels')[index] };
    }
    model.send({ event: 'click', values });
  });
  el.appendChild(button);
}
export default { render };
"""


def _options(widget: Any) -> tuple[list[str], list[Any]]:
    """(labels, values) of a selection widget's options, `("label", value)` pairs or plain values."""
    pairs = [o if isinstance(o, tuple) else (str(o), o) for o in widget.options]
    return [label for label, _ in pairs], [value for _, value in pairs]


class ClickWithValues(anywidget.AnyWidget):  # type: ignore[misc]
    """A button whose click tells the kernel what its source widgets showed when it was pressed;
    `click()` from Python uses the kernel's values.

    Args:
        sources: {name: widget} whose values each click carries; a handler gets {name: value}. A
            selection whose options changed between the click and its handling (the label at the sent
            index differs) reads as the kernel's value: the options and the pick were both set there.
    """

    _esm = _CLICK_WITH_VALUES_ESM
    description = Unicode("").tag(sync=True)
    tooltip = Unicode("").tag(sync=True)
    disabled = Bool(False).tag(sync=True)
    sources = Dict(Unicode()).tag(sync=True)

    def __init__(self, *, sources: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(sources={name: widget.model_id for name, widget in sources.items()}, **kwargs)
        self._source_widgets = dict(sources)
        self._handlers: list[Callable[[dict[str, Any]], Any]] = []
        self.on_msg(self._message)

    def on_click(self, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Call `handler({name: value})` on each click, with the values the sources showed then."""
        self._handlers.append(handler)

    def click(self) -> None:
        """Click from Python: the sources' values as the kernel has them."""
        self._fire({name: widget.value for name, widget in self._source_widgets.items()})

    def _message(self, _: Any, content: Any, buffers: Any) -> None:
        # what the browser sends is checked like any input: a bad field reads as the kernel's value
        if not isinstance(content, dict) or content.get("event") != "click":
            return
        sent = content.get("values")
        sent = sent if isinstance(sent, dict) else {}
        self._fire({name: self._read(name, sent.get(name)) for name in self._source_widgets})

    def _read(self, name: str, sent: Any) -> Any:
        """A source's value as the browser sent it."""
        widget = self._source_widgets[name]
        if not isinstance(sent, dict):
            return widget.value
        if "index" not in sent:
            value = sent.get("value")
            return value if isinstance(value, str) else widget.value
        index = sent["index"]
        if index is None:
            return None
        labels, values = _options(widget)
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(labels) and labels[index] == sent.get("label"):
            return values[index]
        return widget.value

    def _fire(self, values: dict[str, Any]) -> None:
        for handler in self._handlers:
            handler(values)


__all__ = ["ClickWithValues"]
