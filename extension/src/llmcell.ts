/**
 * `%%llm` cells read as prompts (CodeMirror 6): in a cell whose first line starts with `%%llm`, the first
 * line is shown as a magic line (the magic, the combo, the options) and the lines below it as Markdown,
 * over the kernel language's own highlighting. Pure CodeMirror and Lezer, so the unit tests run it in jsdom.
 */

import { Extension, Range, RangeSet } from '@codemirror/state';
import { Decoration, DecorationSet, EditorView, ViewPlugin, ViewUpdate } from '@codemirror/view';
import { Parser } from '@lezer/common';
import { highlightTree, tagHighlighter, tags } from '@lezer/highlight';

const MAGIC = /^%%llm(?=\s|$)/;

/** Markdown's highlight tags as classes of our own (styled in base.css from the theme's variables). */
const markdownClasses = tagHighlighter([
  { tag: tags.heading, class: 'cm-nbr-md-heading' },
  { tag: tags.strong, class: 'cm-nbr-md-strong' },
  { tag: tags.emphasis, class: 'cm-nbr-md-em' },
  { tag: tags.monospace, class: 'cm-nbr-md-code' },
  { tag: [tags.link, tags.url], class: 'cm-nbr-md-link' },
  { tag: tags.quote, class: 'cm-nbr-md-quote' },
  { tag: [tags.processingInstruction, tags.contentSeparator, tags.list], class: 'cm-nbr-md-mark' }
]);

const magicLine = Decoration.line({ class: 'cm-nbr-magic-line' });
const promptLine = Decoration.line({ class: 'cm-nbr-prompt-line' });
const marks: Record<string, Decoration> = {};
function mark(cls: string): Decoration {
  return (marks[cls] ??= Decoration.mark({ class: cls }));
}

/** The decorations of one document: none unless its first line starts with `%%llm`. */
export function llmDecorations(text: string, markdown: Parser | null): DecorationSet {
  const firstEnd = text.indexOf('\n') === -1 ? text.length : text.indexOf('\n');
  const first = text.slice(0, firstEnd);
  if (!MAGIC.test(first)) {
    return Decoration.none;
  }
  const ranges: Range<Decoration>[] = [magicLine.range(0), mark('cm-nbr-magic').range(0, 5)];
  // the options (-t 0.2, --no-stream) and the combo: the first word that is not an option or its value
  let combo = false;
  let afterOption = false;
  for (const m of first.slice(5).matchAll(/\S+/g)) {
    const from = 5 + (m.index ?? 0);
    const word = m[0];
    if (word.startsWith('-')) {
      ranges.push(mark('cm-nbr-option').range(from, from + word.length));
      afterOption = !word.startsWith('--no-') && !['--explain', '--chat', '--new'].includes(word);
    } else if (!combo && !afterOption) {
      ranges.push(mark('cm-nbr-combo').range(from, from + word.length));
      combo = true;
    } else {
      afterOption = false;
    }
  }
  if (firstEnd < text.length) {
    const bodyStart = firstEnd + 1;
    for (let at = bodyStart; at <= text.length; ) {
      ranges.push(promptLine.range(at));
      const next = text.indexOf('\n', at);
      if (next === -1) {
        break;
      }
      at = next + 1;
    }
    if (markdown !== null) {
      const tree = markdown.parse(text.slice(bodyStart));
      highlightTree(tree, markdownClasses, (from, to, classes) => {
        for (const cls of classes.split(' ')) {
          ranges.push(mark(cls).range(bodyStart + from, bodyStart + to));
        }
      });
    }
  }
  return RangeSet.of(ranges, true);
}

/**
 * The editor extension.
 *
 * @param markdown returns the Markdown parser once it is loaded (JupyterLab loads languages lazily),
 *   or null until then: the magic line is marked at once, the Markdown when the parser is there
 * @param loaded settles when the parser is loaded (editors made before that redraw then)
 */
export function llmCellHighlight(markdown: () => Parser | null, loaded: Promise<unknown>): Extension {
  return ViewPlugin.fromClass(
    class {
      decorations: DecorationSet;
      private parser: Parser | null;

      private live = true;

      constructor(view: EditorView) {
        this.parser = markdown();
        this.decorations = llmDecorations(view.state.doc.toString(), this.parser);
        if (this.parser === null) {
          void loaded.then(() => this.live && view.dispatch({}));
        }
      }

      destroy(): void {
        this.live = false;
      }

      update(update: ViewUpdate): void {
        const parser = markdown();
        if (update.docChanged || parser !== this.parser) {
          this.parser = parser;
          this.decorations = llmDecorations(update.state.doc.toString(), parser);
        }
      }
    },
    { decorations: plugin => plugin.decorations }
  );
}
