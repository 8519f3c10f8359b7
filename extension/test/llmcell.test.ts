import { EditorState } from '@codemirror/state';
import { DecorationSet, EditorView } from '@codemirror/view';
import { parser } from '@lezer/markdown';
import { describe, expect, it } from 'vitest';

import { llmCellHighlight, llmDecorations } from '../src/llmcell';

function classes(set: DecorationSet, text: string): [string, string][] {
  const out: [string, string][] = [];
  set.between(0, text.length, (from, to, deco) => {
    const spec = deco.spec as { class?: string; attributes?: { class?: string } };
    out.push([spec.class ?? '', text.slice(from, to)]);
  });
  return out;
}

describe('%%llm cells', () => {
  const text = '%%llm fast -t 0.2 --no-stream\n# Title\nExplain **this** in `code`.';

  it('marks the magic, the combo and the options on the first line', () => {
    const found = classes(llmDecorations(text, parser), text);
    expect(found).toContainEqual(['cm-nbr-magic', '%%llm']);
    expect(found).toContainEqual(['cm-nbr-combo', 'fast']);
    expect(found).toContainEqual(['cm-nbr-option', '-t']);
    expect(found).toContainEqual(['cm-nbr-option', '--no-stream']);
    expect(found.filter(([c]) => c === 'cm-nbr-combo')).toHaveLength(1); // 0.2 is the option's value
  });

  it('highlights the lines below as Markdown', () => {
    const found = classes(llmDecorations(text, parser), text);
    expect(found.filter(([c]) => c === 'cm-nbr-prompt-line')).toHaveLength(2);
    // the highlighter splits a span where its markup is: join the pieces of each class
    const joined = (cls: string): string => found.filter(([c]) => c === cls).map(([, t]) => t).join('');
    expect(joined('cm-nbr-md-strong')).toBe('**this**');
    expect(joined('cm-nbr-md-code')).toBe('code'); // the backticks are markup
    expect(joined('cm-nbr-md-mark')).toContain('#');
    expect(found.some(([c, t]) => c === 'cm-nbr-md-heading' && t.includes('Title'))).toBe(true);
  });

  it('leaves every other cell alone', () => {
    expect(llmDecorations('print("%%llm")', parser).size).toBe(0);
    expect(llmDecorations('%%llmx fast\nhi', parser).size).toBe(0);
    expect(llmDecorations('%%time\n**x**', parser).size).toBe(0);
  });

  it('marks the magic line before the Markdown parser has loaded', () => {
    const found = classes(llmDecorations(text, null), text);
    expect(found).toContainEqual(['cm-nbr-magic', '%%llm']);
    expect(found.some(([c]) => c.startsWith('cm-nbr-md-'))).toBe(false);
  });

  it('decorates a live editor, and redraws when the parser arrives', async () => {
    let markdown: typeof parser | null = null;
    let arrive: () => void = () => undefined;
    const loaded = new Promise<void>(resolve => (arrive = resolve));
    const view = new EditorView({
      state: EditorState.create({ doc: text, extensions: [llmCellHighlight(() => markdown, loaded)] }),
      parent: document.body
    });
    expect(view.dom.querySelector('.cm-nbr-magic')?.textContent).toBe('%%llm');
    expect(view.dom.querySelector('.cm-nbr-md-strong')).toBeNull();
    markdown = parser;
    arrive();
    await loaded;
    await Promise.resolve();
    const strong = [...view.dom.querySelectorAll('.cm-nbr-md-strong')].map(n => n.textContent).join('');
    expect(strong).toBe('**this**');
    view.destroy();
  });
});
