/** This notebook's spend in this session, summed from the results as they arrive. */

import { formatDollars, parseDollars, plural } from './format';
import { ResultPayload } from './payload';

export class SpendTally {
  /** results counted */
  calls = 0;
  /** the known part, in picodollars */
  known = 0n;
  /** results whose price is unknown in whole or in part (never counted as $0) */
  unknown = 0;
  private seen = new Set<string>();

  /**
   * Count one result once.
   *
   * @param payload the result's payload
   * @param key what identifies the result (its display id or message id): a result updated in place
   *   or shown again is not counted twice
   * @returns whether it was counted
   */
  add(payload: ResultPayload, key: string): boolean {
    if (this.seen.has(key)) {
      return false;
    }
    this.seen.add(key);
    this.calls += 1;
    const pico = parseDollars(payload.cost);
    if (pico === null) {
      this.unknown += 1;
    } else {
      this.known += pico;
      if (payload.cost_unknown_attempts > 0) {
        this.unknown += 1;
      }
    }
    return true;
  }

  /** Forget everything (a new kernel is a new session). */
  reset(): void {
    this.calls = 0;
    this.known = 0n;
    this.unknown = 0;
    this.seen.clear();
  }

  /** The amount: `$0.000123`, `$0.000123 + unknown`, `cost unknown`, or `no calls yet`. */
  get amount(): string {
    if (this.calls === 0) {
      return 'no calls yet';
    }
    if (this.unknown === this.calls && this.known === 0n) {
      return 'cost unknown';
    }
    return formatDollars(this.known) + (this.unknown > 0 ? ' + unknown' : '');
  }

  /** The status bar's text: `$0.000123 · 2 calls`. */
  get text(): string {
    return this.calls === 0 ? 'nbrouter: no calls yet' : `${this.amount} · ${plural(this.calls, 'call')}`;
  }

  /** The tooltip: what the sum covers. */
  get title(): string {
    const parts = [`nbrouter: ${plural(this.calls, 'call')} from this notebook in this kernel session`];
    if (this.unknown > 0) {
      parts.push(`${plural(this.unknown, 'call')} at an unknown price, not counted in the sum`);
    }
    parts.push('click for the live status board');
    return parts.join('; ');
  }
}
