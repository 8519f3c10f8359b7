/**
 * nbrouter's JupyterLab / Notebook 7 plugin: the session's spend and the pool's health in the status bar
 * (in Notebook 7, which has no status bar, in the notebook's toolbar), and the live status board in a
 * side panel. The result renderer is the MIME extension in mime.ts.
 */

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { EditorExtensionRegistry, IEditorExtensionRegistry, IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Signal } from '@lumino/signaling';
import { SplitPanel, Widget } from '@lumino/widgets';

import { Parser } from '@lezer/common';

import { buildBoard, health, HEALTH_TEXT, storeNote } from './board';
import { llmCellHighlight } from './llmcell';
import { NotebookSession } from './session';
import { spendText, spendTitle } from './spend';

const ROUTE_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">' +
  '<g class="jp-icon3" fill="#616161"><rect x="1" y="3" width="5" height="3" rx="1"/>' +
  '<rect x="7" y="3" width="8" height="3" rx="1" opacity="0.5"/><rect x="1" y="10" width="9" height="3" rx="1"/>' +
  '<rect x="11" y="10" width="4" height="3" rx="1" opacity="0.5"/></g></svg>';

const routeIcon = new LabIcon({ name: 'nbrouter:route', svgstr: ROUTE_SVG });

/** How often the open board asks the kernel again, and redraws the time left. */
const POLL_MS = 3000;
const TICK_MS = 1000;
/** The side panel opens wide enough for every name on one line, up to this share of the window. */
const MAX_PANEL_SHARE = 0.45;

/** The spend item: a health dot and `$0.000123 · 2 calls`; a click opens the board. */
class SpendItem extends Widget {
  private session: NotebookSession | null = null;
  private readonly dot = document.createElement('span');
  private readonly label = document.createElement('span');

  constructor(private readonly openBoard: (session: NotebookSession) => void) {
    super();
    this.addClass('nbr-spend-item');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this.dot.className = 'nbr-dot';
    this.label.className = 'nbr-spend';
    this.node.append(this.dot, this.label);
    this.node.addEventListener('click', () => this.session && this.openBoard(this.session));
    this.node.addEventListener('keydown', event => {
      if ((event.key === 'Enter' || event.key === ' ') && this.session) {
        this.openBoard(this.session);
      }
    });
  }

  follow(session: NotebookSession | null): void {
    this.session?.changed.disconnect(this.update, this);
    this.session = session;
    session?.changed.connect(this.update, this);
    this.update();
  }

  get active(): boolean {
    return this.session?.loaded === true;
  }

  update(): void {
    const s = this.session;
    this.node.classList.toggle('nbr-hidden', !this.active);
    if (s === null) {
      return;
    }
    const h = health(s.status);
    const down = storeNote(s.status);
    this.dot.className = `nbr-dot nbr-health-${down ? 'degraded' : h}`;
    this.label.textContent = spendText(s.spend) + (down ? ` · ${down}` : '');
    const why = down ? s.status?.store?.warning : null;
    this.node.title = `${spendTitle(s.spend)}. Pool: ${HEALTH_TEXT[h]}.`
      + (why ? ` ${why.charAt(0).toUpperCase()}${why.slice(1)}.` : '');
    this.node.dataset.health = h;
    this.node.dataset.store = s.status?.store?.mode ?? '';
  }
}

/** The side panel: the status board of the current notebook's kernel, live while it is shown. */
class BoardPanel extends Widget {
  private session: NotebookSession | null = null;
  private poll = 0;
  private tick = 0;
  /** the min-width asked of the side area so far (it only grows while shown: the panel does not jump) */
  private minWidth = 0;
  /** the side area's split child given a min-width of its own (Notebook 7's does not follow ours) */
  private widened: Widget | null = null;
  private readonly heading = document.createElement('div');
  private readonly body = document.createElement('div');

  constructor() {
    super();
    this.id = 'nbrouter-board';
    this.addClass('nbr-board');
    this.title.icon = routeIcon;
    this.title.caption = 'nbrouter: status board';
    this.heading.className = 'nbr-board-heading';
    this.body.className = 'nbr-board-body';
    this.node.append(this.heading, this.body);
  }

  follow(session: NotebookSession | null): void {
    this.session?.changed.disconnect(this.draw, this);
    this.session = session;
    session?.changed.connect(this.draw, this);
    if (this.isVisible) {
      session?.refresh();
    }
    this.draw();
  }

  protected onAfterShow(): void {
    this.session?.refresh();
    this.poll = window.setInterval(() => {
      if (this.session && !this.session.waiting) {
        this.session.refresh();
      }
    }, POLL_MS);
    this.tick = window.setInterval(() => this.draw(), TICK_MS);
    this.draw();
  }

  protected onAfterHide(): void {
    window.clearInterval(this.poll);
    window.clearInterval(this.tick);
    // another panel in the side area takes its own width again
    if (this.widened !== null) {
      this.widened.node.style.minWidth = '';
      this.widened.parent?.fit();
      this.widened = null;
    }
    this.node.style.minWidth = '';
    this.minWidth = 0;
  }

  protected onBeforeDetach(): void {
    this.onAfterHide();
  }

  private draw(): void {
    const s = this.session;
    const h = health(s?.status ?? null);
    this.heading.replaceChildren();
    const dot = document.createElement('span');
    dot.className = `nbr-dot nbr-health-${h}`;
    const title = document.createElement('span');
    title.textContent = s ? `nbrouter · ${s.panel.title.label}` : 'nbrouter';
    const summary = document.createElement('div');
    summary.className = 'nbr-board-summary';
    if (s === null || !s.loaded) {
      summary.textContent = 'no notebook with nbrouter loaded (run %load_ext nbrouter)';
    } else {
      const down = storeNote(s.status);
      summary.textContent = `${spendText(s.spend)} · ${HEALTH_TEXT[h]}` + (down ? ` · ${down}` : '');
    }
    this.heading.append(dot, title, summary);
    if (s?.error) {
      const error = document.createElement('div');
      error.className = 'nbr-board-error';
      error.textContent = s.error;
      this.heading.appendChild(error);
    }
    if (s === null || !s.loaded || s.status === null) {
      this.body.replaceChildren();
      return;
    }
    const elapsed = (Date.now() - s.fetchedAt) / 1000;
    this.body.replaceChildren(buildBoard(document, s.status, elapsed, key => s.reset(key)));
    this.fitNames();
  }

  /**
   * Give the name column the width of its longest name while that leaves the state column half of the
   * board: the state wraps between its words first, a name only after its `#` and `/` when it must.
   */
  private keepNamesWhole(): void {
    const names = [...this.body.querySelectorAll<HTMLElement>('td.nbr-name')];
    let widest = 0;
    for (const cell of names) {
      cell.style.whiteSpace = 'nowrap';
      cell.style.minWidth = '';
      widest = Math.max(widest, cell.scrollWidth);
      cell.style.whiteSpace = '';
    }
    const room = this.body.clientWidth / 2;
    for (const cell of names) {
      cell.style.minWidth = widest <= room ? `${widest}px` : '';
    }
  }

  /**
   * Ask for a width that shows every name on one line (up to MAX_PANEL_SHARE of the window): the
   * panel's min-width, which JupyterLab's and Notebook 7's side areas honour once told to fit again.
   * Narrower than that, a name wraps after its `#` and `/` only.
   */
  private fitNames(): void {
    if (!this.isVisible) {
      return;
    }
    this.keepNamesWhole();
    const tables = [...this.body.querySelectorAll<HTMLTableElement>('table')];
    let natural = 0;
    for (const table of tables) {
      table.style.width = 'max-content';
      natural = Math.max(natural, table.getBoundingClientRect().width);
      table.style.width = '';
    }
    const style = getComputedStyle(this.node);
    const padding = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
    const wanted = Math.min(Math.ceil(natural + padding + 2), Math.floor(window.innerWidth * MAX_PANEL_SHARE));
    if (wanted <= this.minWidth) {
      return;
    }
    window.requestAnimationFrame(() => this.keepNamesWhole());  // once the panel has its new width
    this.minWidth = wanted;
    // JupyterLab's side area passes a child's min-width up to its split panel when told to fit
    this.node.style.minWidth = `${wanted}px`;
    this.parent?.fit();
    // Notebook 7's side panel does not: give the split panel's child the width itself
    let child: Widget | null = this;
    while (child !== null && !(child.parent instanceof SplitPanel)) {
      child = child.parent;
    }
    if (child !== null && child !== this) {
      const extra = child.node.getBoundingClientRect().width - this.node.getBoundingClientRect().width;
      const needed = wanted + Math.max(0, extra);
      if (child.node.getBoundingClientRect().width < needed - 1) {
        child.node.style.minWidth = `${needed}px`;
        this.widened = child;
        child.parent?.fit();
      }
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbrouter-labextension:plugin',
  description: "nbrouter's session spend, pool health and live status board.",
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, statusBar: IStatusBar | null) => {
    const sessions = new Map<NotebookPanel, NotebookSession>();
    const board = new BoardPanel();
    const openBoard = (session: NotebookSession): void => {
      board.follow(session);
      if (!board.isAttached) {
        app.shell.add(board, 'right', { rank: 900 });
      }
      app.shell.activateById(board.id);
    };
    const activeChanged = new Signal<unknown, void>(board);
    const item = statusBar ? new SpendItem(openBoard) : null;

    const sessionOf = (panel: NotebookPanel | null): NotebookSession | null => {
      if (panel === null) {
        return null;
      }
      let session = sessions.get(panel);
      if (session === undefined) {
        const created = new NotebookSession(panel);
        sessions.set(panel, created);
        created.changed.connect(() => activeChanged.emit(), item);
        panel.disposed.connect(() => {
          sessions.delete(panel);
          created.dispose();
        });
        if (item === null) {
          // Notebook 7: the item lives in the notebook's own toolbar
          const own = new SpendItem(openBoard);
          own.follow(created);
          panel.toolbar.insertItem(10, 'nbrouter-spend', own);
        }
        session = created;
      }
      return session;
    };

    tracker.widgetAdded.connect((_, panel) => sessionOf(panel));
    tracker.currentChanged.connect((_, panel) => {
      const session = sessionOf(panel);
      item?.follow(session);
      if (session !== null) {
        board.follow(session);
      }
      activeChanged.emit();
    });
    tracker.forEach(panel => sessionOf(panel));
    const current = sessionOf(tracker.currentWidget);
    item?.follow(current);
    board.follow(current);

    if (statusBar && item) {
      statusBar.registerStatusItem('nbrouter-labextension:spend', {
        item,
        align: 'left',
        rank: 10,
        isActive: () => item.active,
        activeStateChanged: activeChanged
      });
    }
  }
};

/** `%%llm` cells highlighted as a magic line over a Markdown prompt (see llmcell.ts). */
const llmCells: JupyterFrontEndPlugin<void> = {
  id: 'nbrouter-labextension:llm-cells',
  description: 'Highlights the prompt of a %%llm cell as Markdown.',
  autoStart: true,
  requires: [IEditorExtensionRegistry, IEditorLanguageRegistry],
  activate: (app: JupyterFrontEnd, extensions: IEditorExtensionRegistry, languages: IEditorLanguageRegistry) => {
    let parser: Parser | null = null;
    const loaded = languages
      .getLanguage('markdown')
      .then(language => {
        parser = language?.support?.language.parser ?? null;
      })
      .catch(() => undefined); // without the parser the magic line is still marked
    const extension = llmCellHighlight(() => parser, loaded);
    extensions.addExtension({
      name: 'nbrouter:llm-cells',
      // not in Markdown cells and files, where a line starting with %%llm is just text (cell editors
      // are the "inline" ones; the extension checks the first line itself)
      factory: options =>
        /markdown|gfm/.test(options.model.mimeType) ? null : EditorExtensionRegistry.createImmutableExtension(extension)
    });
  }
};

export default [plugin, llmCells];
