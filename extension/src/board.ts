/**
 * The live status board's data and DOM (no JupyterLab imports): the rows the kernel's comm sends
 * (Router.status(), see nbrouter/notebook/frontend.py), the pool's health as one colour, and the table
 * with a reset button per row.
 */

import { formatSeconds, formatSpan } from './format';

export interface CandidateRow {
  candidate: string;
  breaker: string;
  hold: string | null;
  hold_reason: string | null;
  /** seconds left when the kernel answered; null for none or for a hold without an end */
  hold_left_s: number | null;
  p50_s: number | null;
  requests: number;
  errors: number;
  last_error: string | null;
}

export interface AccountRow {
  account: string;
  hold: string | null;
  hold_reason: string | null;
  hold_left_s: number | null;
}

export interface BoardStatus {
  candidates: CandidateRow[];
  accounts: AccountRow[];
  warning: string | null;
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
    last_error: str(r.last_error)
  }));
  const accounts = (Array.isArray(obj.accounts) ? obj.accounts : []).filter(isObject).map(r => ({
    account: str(r.account) ?? '',
    hold: str(r.hold),
    hold_reason: str(r.hold_reason),
    hold_left_s: num(r.hold_left_s)
  }));
  return {
    candidates: candidates.filter(r => r.candidate),
    accounts: accounts.filter(r => r.account),
    warning: str(obj.warning)
  };
}

export type Health = 'ok' | 'degraded' | 'down' | 'unknown';

function unwell(row: { hold: string | null; breaker?: string }): boolean {
  return row.hold !== null || (row.breaker !== undefined && row.breaker !== 'closed');
}

/** ok: nothing held or tripped; degraded: some of it; down: every candidate; unknown: no status yet. */
export function health(status: BoardStatus | null): Health {
  if (status === null || status.candidates.length === 0) {
    return 'unknown';
  }
  const bad = status.candidates.filter(unwell).length + status.accounts.filter(unwell).length;
  if (bad === 0) {
    return 'ok';
  }
  return status.candidates.every(unwell) ? 'down' : 'degraded';
}

export const HEALTH_TEXT: Record<Health, string> = {
  ok: 'every candidate healthy',
  degraded: 'some candidates cooling down or tripped',
  down: 'every candidate cooling down or tripped',
  unknown: 'pool health not known yet'
};

/** A row's state in words: `healthy`, `cooldown: rate_limited`, `breaker open`. */
export function stateText(row: { hold: string | null; hold_reason: string | null; breaker?: string }): string {
  const parts: string[] = [];
  if (row.hold) {
    parts.push(row.hold_reason ? `${row.hold}: ${row.hold_reason}` : row.hold);
  }
  if (row.breaker !== undefined && row.breaker !== 'closed') {
    parts.push(`breaker ${row.breaker}`);
  }
  return parts.length ? parts.join(', ') : 'healthy';
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
    rows: { key: string; cells: string[]; held: boolean; detail?: string }[]
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
      if (row.detail) {
        tr.title = row.detail;
      }
      for (const value of row.cells) {
        const td = tr.insertCell();
        td.textContent = value;
      }
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
      held: unwell(r),
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
      held: unwell(r),
      cells: [r.account, withLeft(stateText(r), timeLeft(r.hold_left_s, elapsedS))]
    }))
  );
  if (status.warning) {
    const p = doc.createElement('p');
    p.className = 'nbr-board-warning';
    p.textContent = `warning: ${status.warning}`;
    root.appendChild(p);
  }
  return root;
}
