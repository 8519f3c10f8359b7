/**
 * The result's picture, built with the DOM alone (no JupyterLab imports, so the unit tests build it in
 * jsdom): the compact line, the route as a timeline of one bar per attempt, and the full attempt table
 * behind one click. Every string from the payload goes in as text, never as HTML.
 */

import { costText, formatDollars, formatSeconds, parseDollars, plural } from './format';
import { AttemptPayload, ResultPayload } from './payload';

export const ATTEMPT_HEADERS = ['#', 'candidate', 'action', 'kind', 'status', 'latency', 'tokens', 'cost', 'note'];

/** A bar for an attempt that took no time (a skip) still gets this share, so it can be seen and hovered. */
const MIN_SHARE = 0.04;

function el<K extends keyof HTMLElementTagNameMap>(
  doc: Document,
  tag: K,
  className?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = doc.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** One attempt's row of the table, as the kernel's attempt table writes it. */
export function attemptRow(a: AttemptPayload, index: number): string[] {
  const tokens = a.usage ? `${a.usage.input_tokens}+${a.usage.output_tokens}` : '';
  const pico = parseDollars(a.cost);
  // an attempt that used nothing and priced nothing has no cost; one that used tokens at an unknown price says so
  const cost = pico !== null ? formatDollars(pico) : a.usage ? 'unknown' : '';
  const note = a.hold ? `[${a.hold}] ${a.note}`.trim() : a.note;
  return [
    String(index + 1),
    a.path || a.candidate,
    a.action,
    a.kind ?? '',
    a.status === null ? '' : String(a.status),
    formatSeconds(a.latency),
    tokens,
    cost,
    note.slice(0, 120)
  ];
}

/** The compact line's parts: served by, tokens, cost, time (and PARTIAL / cached). */
export function summaryParts(p: ResultPayload): string[] {
  const tries = p.attempts.filter(a => a.action !== 'skipped').length;
  const parts = [
    p.served_by ? `served by ${p.served_by}` : 'not served',
    plural(tries, 'attempt'),
    p.usage ? `${p.usage.input_tokens + p.usage.output_tokens} tokens` : 'tokens unknown',
    costText(p.cost, p.cost_unknown_attempts),
    formatSeconds(p.latency)
  ].filter(Boolean);
  if (p.cached) {
    parts.push('cached');
  }
  if (p.partial) {
    parts.push('PARTIAL');
  }
  return parts;
}

/** Each attempt's share of the timeline's width (latency over the total; skips get a sliver). */
export function barShares(attempts: AttemptPayload[]): number[] {
  const total = attempts.reduce((sum, a) => sum + (a.latency ?? 0), 0);
  if (total <= 0) {
    return attempts.map(() => 1 / Math.max(1, attempts.length));
  }
  const raw = attempts.map(a => Math.max(MIN_SHARE, (a.latency ?? 0) / total));
  const sum = raw.reduce((s, x) => s + x, 0);
  return raw.map(x => x / sum);
}

export interface ResultView {
  root: HTMLElement;
  /** where the renderer puts the answer's Markdown */
  answer: HTMLElement;
  timeline: HTMLElement;
  bars: HTMLElement[];
  tip: HTMLElement;
  table: HTMLTableElement;
}

function tipText(a: AttemptPayload, index: number): string {
  const row = attemptRow(a, index);
  return ATTEMPT_HEADERS.slice(1)
    .map((h, i) => [h, row[i + 1]] as const)
    .filter(([, v]) => v !== '')
    .map(([h, v]) => `${h}: ${v}`)
    .join(' · ');
}

/** The table of every attempt. */
export function attemptTable(doc: Document, attempts: AttemptPayload[]): HTMLTableElement {
  const table = el(doc, 'table', 'nbr-attempts');
  const head = table.createTHead().insertRow();
  for (const h of ATTEMPT_HEADERS) {
    head.appendChild(el(doc, 'th', undefined, h));
  }
  const body = table.createTBody();
  attempts.forEach((a, i) => {
    const tr = body.insertRow();
    tr.className = `nbr-row nbr-action-${a.action}`;
    for (const value of attemptRow(a, i)) {
      tr.appendChild(el(doc, 'td', undefined, value));
    }
  });
  return table;
}

/** Build the whole view of one result; the caller fills `answer`. */
export function buildResult(doc: Document, p: ResultPayload): ResultView {
  const root = el(doc, 'div', 'nbr-result');
  const answer = el(doc, 'div', 'nbr-answer');
  root.appendChild(answer);

  const details = el(doc, 'details', 'nbr-route');
  const summary = el(doc, 'summary', 'nbr-line');
  summary.title = 'show every attempt';
  summary.appendChild(el(doc, 'span', 'nbr-line-text', summaryParts(p).join(' · ')));

  const timeline = el(doc, 'span', 'nbr-timeline');
  timeline.setAttribute('role', 'list');
  timeline.setAttribute('aria-label', `route: ${p.attempts.map(a => `${a.candidate} ${a.action}`).join(', ')}`);
  const tip = el(doc, 'span', 'nbr-tip');
  tip.hidden = true;
  const shares = barShares(p.attempts);
  const bars = p.attempts.map((a, i) => {
    const bar = el(doc, 'span', `nbr-bar nbr-action-${a.action}`);
    bar.style.flexGrow = String(shares[i]);
    bar.dataset.action = a.action;
    bar.setAttribute('role', 'listitem');
    bar.tabIndex = 0;
    const text = tipText(a, i);
    bar.setAttribute('aria-label', text);
    const show = (): void => {
      tip.textContent = text;
      tip.hidden = false;
    };
    const hide = (): void => {
      tip.hidden = true;
    };
    bar.addEventListener('mouseenter', show);
    bar.addEventListener('focus', show);
    bar.addEventListener('mouseleave', hide);
    bar.addEventListener('blur', hide);
    timeline.appendChild(bar);
    return bar;
  });
  summary.appendChild(timeline);
  // in the summary, so hovering shows the row while the table is folded
  summary.appendChild(tip);
  details.appendChild(summary);
  const table = attemptTable(doc, p.attempts);
  // a wide table scrolls in its own box instead of breaking its notes mid-word
  const box = el(doc, 'div', 'nbr-attempts-box');
  box.appendChild(table);
  details.appendChild(box);
  root.appendChild(details);
  return { root, answer, timeline, bars, tip, table };
}
