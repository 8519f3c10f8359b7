/**
 * The live status board's data and DOM (no JupyterLab imports): the rows the kernel's comm sends
 * (Router.status(), see nbrouter/notebook/frontend.py), each with its health in the words `%llm status`
 * uses (the kernel words it: one rule), the pool's health as one colour, and the table with a reset
 * button per row.
 */

import { formatSeconds, formatSpan } from './format';

/** A row's health as `%llm status` says it: `✓ healthy`, `! flaky`, `! cooling down`, `✗ locked`... */
export interface Health {
  health: string;
  /** ok, warn, bad, idle (or '' from a kernel that did not say) */
  tone: string;
}

export interface CandidateRow extends Health {
  candidate: string;
  breaker: string;
  hold: string | null;
  hold_reason: string | null;
  /** seconds left when the kernel answered; null for none or for a hold without an end */
  hold_left_s: number | null;
  p50_s: number | null;
  requests: number;
  errors: number;
  /** the recent share of failed requests, as `%llm status` shows it */
  error_rate: number;
  last_error: string | null;
}

export interface AccountRow extends Health {
  account: string;
  hold: string | null;
  hold_reason: string | null;
  hold_left_s: number | null;
}

/** The shared state's store as `Router.status().store` says it: "shared", or while it is down "local" or "wait". */
export interface StoreState {
  kind: string;
  mode: string;
  warning: string | null;
}

export interface BoardStatus {
  candidates: CandidateRow[];
  accounts: AccountRow[];
  warning: string | null;
  /** null: a kernel that does not say (an older nbrouter) */
  store: StoreState | null;
  /** a shared budget as every kernel spent it (`shared budget 'team': spent $0.42 of $5.00 (stop)`), or null */
  budget: string | null;
}

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** A status reply checked and typed (rows without a key are dropped). */
export function parseStatus(data: unknown): BoardStatus {
  const obj = isObject(data) ? data : {};
  const candidates = (Array.isArray(obj.candidates) ? obj.candidates : []).filter(isObject).map(r => ({
    candidate: str(r.candidate) ?? '',
    breaker: str(r.breaker) ?? 'closed',
    hold: str(r.hold),
    hold_reason: str(r.hold_reason),
    hold_left_s: num(r.hold_left_s),
    p50_s: num(r.p50_s),
    requests: num(r.requests) ?? 0,
    errors: num(r.errors) ?? 0,
    error_rate: num(r.error_rate) ?? 0,
    last_error: str(r.last_error),
    health: str(r.health) ?? '',
    tone: str(r.tone) ?? ''
  }));
  const accounts = (Array.isArray(obj.accounts) ? obj.accounts : []).filter(isObject).map(r => ({
    account: str(r.account) ?? '',
    hold: str(r.hold),
    hold_reason: str(r.hold_reason),
    hold_left_s: num(r.hold_left_s),
    health: str(r.health) ?? '',
    tone: str(r.tone) ?? ''
  }));
  const store = isObject(obj.store) && str(obj.store.mode)
    ? { kind: str(obj.store.kind) ?? '', mode: str(obj.store.mode) ?? 'shared', warning: str(obj.store.warning) }
    : null;
  return {
    candidates: candidates.filter(r => r.candidate),
    accounts: accounts.filter(r => r.account),
    warning: str(obj.warning),
    store,
    budget: str(obj.budget)
  };
}

/**
 * What the status item says of the shared state while it is down (null while it answers): how calls are
 * paced meanwhile, in the words of `[state] on_down`.
 */
export function storeNote(status: BoardStatus | null): string | null {
  const store = status?.store;
  if (!store || store.mode === 'shared') {
    return null;
  }
  return store.mode === 'wait' ? 'shared state down: calls wait for it' : 'shared state down: paced here alone';
}

export type PoolHealth = 'ok' | 'degraded' | 'down' | 'unknown';

type HeldRow = { hold: string | null; breaker?: string };

/** Held or tripped: what a reset clears. */
function held(row: HeldRow): boolean {
  return row.hold !== null || (row.breaker !== undefined && row.breaker !== 'closed');
}

/** Not well by the kernel's rule (`%llm status`'s warn or bad), or held where the kernel did not say. */
function unwell(row: HeldRow & Health): boolean {
  return row.tone ? row.tone === 'warn' || row.tone === 'bad' : held(row);
}

/** Cannot serve now: held, tripped or disabled. */
function out(row: HeldRow & Health): boolean {
  return held(row) || row.tone === 'bad';
}

/** ok: every row well; degraded: some not (cooling, tripped, flaky, low quota); down: no candidate can serve. */
export function health(status: BoardStatus | null): PoolHealth {
  if (status === null || status.candidates.length === 0) {
    return 'unknown';
  }
  const bad = status.candidates.filter(unwell).length + status.accounts.filter(unwell).length;
  if (bad === 0) {
    return 'ok';
  }
  return status.candidates.every(out) ? 'down' : 'degraded';
}

export const HEALTH_TEXT: Record<PoolHealth, string> = {
  ok: 'every candidate healthy',
  degraded: 'some candidates cooling down, tripped or flaky',
  down: 'every candidate cooling down or tripped',
  unknown: 'pool health not known yet'
};

/**
 * A row's state in words, as `%llm status` says it: its health (`! flaky`), then its hold and the share
 * of errors when there are any: `! cooling down · cooldown: rate_limit`, `! flaky · 33% errors`.
 */
export function stateText(row: HeldRow & Health & { hold_reason: string | null; errors?: number; error_rate?: number }): string {
  const parts = [row.health || (held(row) ? 'held' : 'healthy')];
  if (row.hold) {
    parts.push(row.hold_reason ? `${row.hold}: ${row.hold_reason}` : row.hold);
  }
  if (row.breaker !== undefined && row.breaker !== 'closed' && !row.health.includes('breaker')) {
    parts.push(`breaker ${row.breaker}`);
  }
  if (row.errors && row.error_rate) {
    parts.push(`${Math.round(row.error_rate * 100)}% errors`);
  }
  return parts.join(' · ');
}

/**
 * A candidate or account name that wraps only after `#` and `/` (`fastco#` / `default/` / `gpt-4o-mini`),
 * never inside a part: each part is a span that does not break, with a break opportunity after it.
 */
export function nameNode(doc: Document, name: string): DocumentFragment {
  const fragment = doc.createDocumentFragment();
  for (const part of name.split(/(?<=[#/])/)) {
    const span = doc.createElement('span');
    span.className = 'nbr-name-part';
    span.textContent = part;
    fragment.append(span, doc.createElement('wbr'));
  }
  return fragment;
}

/** The time left on a hold `elapsed` seconds after the kernel answered. */
export function timeLeft(leftS: number | null, elapsedS: number): string {
  return leftS === null ? '' : formatSpan(leftS - elapsedS);
}

/** `cooldown: rate_limit · 2 min left`, or the state alone when the hold has no end. */
export function withLeft(state: string, left: string): string {
  return left ? `${state} · ${left} left` : state;
}

/** Build the board's tables; `onReset(key)` is called by each row's button. */
export function buildBoard(
  doc: Document,
  status: BoardStatus,
  elapsedS: number,
  onReset: (key: string) => void
): HTMLElement {
  const root = doc.createElement('div');
  root.className = 'nbr-board-tables';
  const section = (
    title: string,
    headers: string[],
    rows: { key: string; cells: string[]; held: boolean; tone: string; detail?: string }[]
  ): void => {
    const h = doc.createElement('h3');
    h.textContent = title;
    root.appendChild(h);
    const table = doc.createElement('table');
    table.className = 'nbr-board-table';
    const head = table.createTHead().insertRow();
    for (const name of [...headers, '']) {
      const th = doc.createElement('th');
      th.textContent = name;
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      tr.className = row.held ? 'nbr-board-row nbr-held' : 'nbr-board-row';
      tr.dataset.key = row.key;
      tr.dataset.tone = row.tone;
      if (row.detail) {
        tr.title = row.detail;
      }
      row.cells.forEach((value, i) => {
        const td = tr.insertCell();
        if (i === 0) {
          td.className = 'nbr-name';
          td.appendChild(nameNode(doc, value));
        } else {
          td.className = 'nbr-state';
          td.textContent = value;
        }
      });
      const td = tr.insertCell();
      const button = doc.createElement('button');
      button.className = 'nbr-reset jp-Button';
      button.textContent = 'reset';
      button.title = `clear ${row.key}'s cooldown, lock and breaker`;
      button.disabled = !row.held;
      button.addEventListener('click', () => onReset(row.key));
      td.appendChild(button);
    }
    root.appendChild(table);
  };
  // two columns and the button, so the board fits JupyterLab's side panel; the rest is in each row's tooltip
  section(
    'candidates',
    ['candidate', 'state'],
    status.candidates.map(r => ({
      key: r.candidate,
      held: held(r),
      tone: r.tone,
      cells: [r.candidate, withLeft(stateText(r), timeLeft(r.hold_left_s, elapsedS))],
      detail: [
        `${r.requests} requests, ${r.errors} errors`,
        r.p50_s === null ? '' : `p50 ${formatSeconds(r.p50_s)}`,
        r.last_error ? `last error: ${r.last_error}` : ''
      ].filter(Boolean).join('; ')
    }))
  );
  section(
    'accounts',
    ['account', 'state'],
    status.accounts.map(r => ({
      key: r.account,
      held: held(r),
      tone: r.tone,
      cells: [r.account, withLeft(stateText(r), timeLeft(r.hold_left_s, elapsedS))]
    }))
  );
  if (status.budget) {
    const p = doc.createElement('p');
    p.className = 'nbr-board-budget';
    p.textContent = status.budget;
    root.appendChild(p);
  }
  if (status.warning) {
    const p = doc.createElement('p');
    p.className = 'nbr-board-warning';
    p.textContent = `warning: ${status.warning}`;
    root.appendChild(p);
  }
  return root;
}
