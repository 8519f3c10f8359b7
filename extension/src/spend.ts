/**
 * The session's spend as the kernel counts it: its cost ledger's total, the one `%llm cost` shows, with
 * `%%llm` cells, `--over` batches and the builder's tests (see nbrouter/notebook/frontend.py). The kernel
 * sends it with every status reply and whenever it grows, so it survives a page reload.
 */

import { formatDollars, parseDollars, plural } from './format';

export interface SessionSpend {
  /** the known part, USD as a decimal string */
  usd: string;
  /** attempts that used tokens at an unknown price (never counted as $0) */
  unknown: number;
  /** routed calls: a cell counts one, a batch its items, a builder test one */
  calls: number;
}

const DECIMAL = /^-?\d+(\.\d+)?$/;

/** The kernel's spend, checked; null for anything else. */
export function parseSpend(value: unknown): SessionSpend | null {
  if (typeof value !== 'object' || value === null) {
    return null;
  }
  const v = value as Record<string, unknown>;
  const count = (x: unknown): number => (typeof x === 'number' && Number.isFinite(x) && x > 0 ? Math.floor(x) : 0);
  if (typeof v.usd !== 'string' || !DECIMAL.test(v.usd)) {
    return null;
  }
  return { usd: v.usd, unknown: count(v.unknown), calls: count(v.calls) };
}

/** The amount: `$0.000123`, `$0.000123 + unknown`, `cost unknown`, or `no calls yet`. */
export function spendAmount(spend: SessionSpend | null): string {
  if (spend === null || spend.calls === 0) {
    return 'no calls yet';
  }
  const pico = parseDollars(spend.usd) ?? 0n;
  if (spend.unknown > 0 && pico === 0n) {
    return 'cost unknown';
  }
  return formatDollars(pico) + (spend.unknown > 0 ? ' + unknown' : '');
}

/** The status bar's text: `$0.000123 · 2 calls`. */
export function spendText(spend: SessionSpend | null): string {
  return spend === null || spend.calls === 0 ? 'nbrouter: no calls yet' : `${spendAmount(spend)} · ${plural(spend.calls, 'call')}`;
}

/** The tooltip: what the sum covers. */
export function spendTitle(spend: SessionSpend | null): string {
  const parts = [`nbrouter: ${plural(spend?.calls ?? 0, 'call')} in this kernel session (cells, batches, builder tests), as %llm cost counts them`];
  if (spend !== null && spend.unknown > 0) {
    parts.push(`${plural(spend.unknown, 'attempt')} at an unknown price, not counted in the sum`);
  }
  parts.push('click for the live status board');
  return parts.join('; ');
}
