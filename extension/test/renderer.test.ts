// The MIME renderer from the fixture bundle, with JupyterLab's own sanitiser and the Markdown parser
// JupyterLab uses (marked); the maths typesetter is a recorder.
import { Sanitizer } from '@jupyterlab/apputils';
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';
import { marked } from 'marked';
import { describe, expect, it } from 'vitest';

import extension, { RenderedResult } from '../src/mime';
import { MIME } from '../src/payload';
import fixture from './fixtures/fallback-result.json';

function model(data: Record<string, unknown>): IRenderMime.IMimeModel {
  return { trusted: true, data, metadata: {}, setData: () => undefined } as unknown as IRenderMime.IMimeModel;
}

function renderer(typeset: HTMLElement[] = []): RenderedResult {
  return new RenderedResult({
    mimeType: MIME,
    sanitizer: new Sanitizer(),
    resolver: null,
    linkHandler: null,
    latexTypesetter: { typeset: (node: HTMLElement) => void typeset.push(node) },
    markdownParser: { render: async (source: string) => marked.parse(source) }
  } as unknown as IRenderMime.IRendererOptions);
}

describe('the result renderer', () => {
  it('is preferred over text/html for our MIME type and safe for untrusted notebooks', () => {
    expect(extension.rendererFactory.mimeTypes).toEqual([MIME]);
    expect(extension.rendererFactory.safe).toBe(true);
    expect(extension.rank).toBeLessThan(50); // text/html's rank
  });

  it('renders the fixture: the answer as Markdown with dollars as written, maths kept, and the route', async () => {
    const typeset: HTMLElement[] = [];
    const r = renderer(typeset);
    await r.renderModel(model(fixture as Record<string, unknown>));
    const answer = r.node.querySelector('.nbr-answer')!;
    expect(answer.textContent).toContain('It costs $5 to $10 a month.');
    expect(answer.querySelectorAll('span.nbr-dollar')).toHaveLength(2); // neither dollar can open maths
    expect(answer.querySelector('em')).toBeNull();
    expect(answer.textContent).toContain('$$E = mc^2$$'); // left for the typesetter
    expect(answer.textContent).toContain('\\(a^2 + b^2\\)');
    expect(answer.querySelector('code')?.textContent).toBe('echo $HOME');
    expect(answer.querySelector('details')).toBeNull(); // the kernel's fallback footer is not repeated
    const bars = [...r.node.querySelectorAll('.nbr-timeline .nbr-bar')].map(b => (b as HTMLElement).dataset.action);
    expect(bars).toEqual(['advance', 'served']);
    expect(r.node.querySelector('.nbr-line-text')?.textContent).toContain('served by sim#default/model-b');
    expect(typeset).toEqual([]); // typeset once it is on the page
    Widget.attach(r, document.body);
    expect(typeset).toEqual([answer]);
    Widget.detach(r);
  });

  it('sanitises the answer, whatever the notebook trust', async () => {
    const r = renderer();
    const data = { ...(fixture as Record<string, unknown>), 'text/markdown': 'hi <img src=x onerror="alert(1)"><script>alert(2)</script>' };
    await r.renderModel(model(data));
    const answer = r.node.querySelector('.nbr-answer')!;
    expect(answer.querySelector('script')).toBeNull();
    expect(answer.querySelector('img')?.getAttribute('onerror') ?? null).toBeNull();
  });

  it('falls back to the plain text for a payload it does not know', async () => {
    const r = renderer();
    await r.renderModel(model({ [MIME]: { something: 'else' }, 'text/plain': 'plain answer' }));
    expect(r.node.querySelector('pre')?.textContent).toBe('plain answer');
    expect(r.node.querySelector('.nbr-timeline')).toBeNull();
  });
});
