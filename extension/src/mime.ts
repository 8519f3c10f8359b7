/**
 * The MIME renderer for nbrouter's results: the answer through JupyterLab's own Markdown renderer and
 * sanitiser, then the compact line and the route as a timeline (see view.ts).
 */

import { renderMarkdown } from '@jupyterlab/rendermime';
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import { answerMarkdown, restoreDollars } from './markdown';
import { MIME, parsePayload } from './payload';
import { buildResult } from './view';

/** Renders one result bundle; what it does not understand it shows as the bundle's plain text. */
export class RenderedResult extends Widget implements IRenderMime.IRenderer {
  constructor(private readonly options: IRenderMime.IRendererOptions) {
    super();
    this.addClass('nbr-rendered');
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const payload = parsePayload(model.data[MIME]);
    const markdown = model.data['text/markdown'];
    if (payload === null) {
      const pre = document.createElement('pre');
      pre.textContent = String(model.data['text/plain'] ?? '');
      this.node.replaceChildren(pre);
      return;
    }
    const view = buildResult(document, payload);
    this.node.replaceChildren(view.root);
    const { sanitizer, resolver, linkHandler, latexTypesetter, markdownParser, translator } = this.options;
    await renderMarkdown({
      host: view.answer,
      source: answerMarkdown(typeof markdown === 'string' ? markdown : ''),
      // the answer is a provider's text: always sanitised, whatever the notebook's trust
      trusted: false,
      sanitizer,
      resolver,
      linkHandler,
      latexTypesetter,
      markdownParser: markdownParser ?? null,
      // typeset after the literal dollars are back in elements of their own
      shouldTypeset: false,
      translator
    });
    restoreDollars(view.answer);
    if (this.isAttached) {
      latexTypesetter?.typeset(view.answer);
    }
  }

  protected onAfterAttach(): void {
    const answer = this.node.querySelector<HTMLElement>('.nbr-answer');
    if (answer) {
      this.options.latexTypesetter?.typeset(answer);
    }
  }
}

export const rendererFactory: IRenderMime.IRendererFactory = {
  // the payload is checked field by field and the answer sanitised, so untrusted notebooks may use it
  safe: true,
  mimeTypes: [MIME],
  createRenderer: options => new RenderedResult(options)
};

const extension: IRenderMime.IExtension = {
  id: 'nbrouter-labextension:result',
  rendererFactory,
  // before text/html, so JupyterLab and Notebook 7 prefer it; other front ends never see this type
  rank: 10,
  dataType: 'json'
};

export default extension;
