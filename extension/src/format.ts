/** Numbers as the kernel's footer writes them: times, tokens, and exact dollar sums. */

/** `340 ms` under a second, `1.25 s` above; empty for no time. */
export function formatSeconds(seconds: number | null): string {
  if (seconds === null) {
    return '';
  }
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

/** A hold's time left: `45 s`, `4 min`, `2 h`. */
export function formatSpan(seconds: number): string {
  const s = Math.max(0, seconds);
  if (s < 90) {
    return `${Math.ceil(s)} s`;
  }
  if (s < 5400) {
    return `${Math.ceil(s / 60)} min`;
  }
  return `${Math.round(s / 3600)} h`;
}

/** Costs are added as integers of 10^-12 dollars, so a sum of many small prices stays exact. */
const SCALE_DIGITS = 12;

/** A decimal string (`"0.000123"`) as picodollars; null for anything else. */
export function parseDollars(value: string | null): bigint | null {
  if (value === null) {
    return null;
  }
  const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(value);
  if (!match) {
    return null;
  }
  const [, sign, whole, fraction = ''] = match;
  const digits = (fraction + '0'.repeat(SCALE_DIGITS)).slice(0, SCALE_DIGITS);
  const magnitude = BigInt(whole) * 10n ** BigInt(SCALE_DIGITS) + BigInt(digits);
  return sign === '-' ? -magnitude : magnitude;
}

/** Picodollars as `$0.000123` (six decimals, as the footer writes them, half up). */
export function formatDollars(pico: bigint, decimals = 6): string {
  const negative = pico < 0n;
  const magnitude = negative ? -pico : pico;
  const unit = 10n ** BigInt(SCALE_DIGITS - decimals);
  const rounded = (magnitude + unit / 2n) / unit;
  const base = 10n ** BigInt(decimals);
  const whole = rounded / base;
  const fraction = (rounded % base).toString().padStart(decimals, '0');
  return `${negative ? '-' : ''}$${whole}.${fraction}`;
}

/** One result's cost as the footer writes it: `$0.000123`, `$0.000123 + unknown`, or `unknown`. */
export function costText(cost: string | null, unknownAttempts = 0): string {
  const pico = parseDollars(cost);
  if (pico === null) {
    return 'cost unknown';
  }
  return formatDollars(pico) + (unknownAttempts > 0 ? ' + unknown' : '');
}

/** `1 call`, `3 calls`. */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
