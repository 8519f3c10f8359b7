/**
 * The JSON a `%%llm` result carries under MIME (built by nbrouter/notebook/frontend.py), checked field
 * by field: it comes from a saved notebook as often as from a live kernel, so nothing in it is trusted.
 */

import { CodeBelow } from './codecell';

export const MIME = 'application/vnd.nbrouter.result+json';

/** What the router did with one candidate; anything else is shown as `other`. */
export const ACTIONS = ['served', 'advance', 'retry', 'stop', 'skipped'] as const;
export type Action = (typeof ACTIONS)[number] | 'other';

export interface Usage {
  input_tokens: number;
  output_tokens: number;
}

export interface AttemptPayload {
  candidate: string;
  path: string;
  action: Action;
  kind: string | null;
  status: number | null;
  /** seconds, or null for a skip */
  latency: number | null;
  usage: Usage | null;
  /** USD as a decimal string, or null when unknown (never 0 for unknown) */
  cost: string | null;
  hold: string | null;
  note: string;
}

export interface ResultPayload {
  version: number;
  combo: string;
  served_by: string;
  model: string;
  usage: Usage | null;
  cost: string | null;
  cost_unknown_attempts: number;
  latency: number | null;
  partial: boolean;
  cached: boolean;
  attempts: AttemptPayload[];
  /** `-f code`: the code to write into the cell below the cell `code.cell` */
  code: CodeBelow | null;
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function text(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

function textOrNull(value: unknown): string | null {
  return typeof value === 'string' ? value : null;
}

function number(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

const DECIMAL = /^-?\d+(\.\d+)?$/;

function decimalOrNull(value: unknown): string | null {
  return typeof value === 'string' && DECIMAL.test(value) ? value : null;
}

function usage(value: unknown): Usage | null {
  if (!isObject(value)) {
    return null;
  }
  return {
    input_tokens: number(value.input_tokens) ?? 0,
    output_tokens: number(value.output_tokens) ?? 0
  };
}

function action(value: unknown): Action {
  return (ACTIONS as readonly unknown[]).includes(value) ? (value as Action) : 'other';
}

function attempt(value: unknown): AttemptPayload | null {
  if (!isObject(value)) {
    return null;
  }
  const latency = number(value.latency);
  return {
    candidate: text(value.candidate),
    path: text(value.path) || text(value.candidate),
    action: action(value.action),
    kind: textOrNull(value.kind),
    status: number(value.status),
    latency: latency === null ? null : Math.max(0, latency),
    usage: usage(value.usage),
    cost: decimalOrNull(value.cost),
    hold: textOrNull(value.hold),
    note: text(value.note)
  };
}

function codeBelow(value: unknown): CodeBelow | null {
  if (!isObject(value) || typeof value.source !== 'string' || typeof value.cell !== 'string' || !value.cell) {
    return null;
  }
  const run = typeof value.run === 'string' && value.run ? { run: value.run } : {};
  return { source: value.source, cell: value.cell, ...run };
}

/** The payload checked and typed, or null when it is not one of ours. */
export function parsePayload(value: unknown): ResultPayload | null {
  if (!isObject(value) || !Array.isArray(value.attempts)) {
    return null;
  }
  const attempts = value.attempts
    .map(attempt)
    .filter((a): a is AttemptPayload => a !== null);
  return {
    version: number(value.version) ?? 0,
    combo: text(value.combo),
    served_by: text(value.served_by),
    model: text(value.model),
    usage: usage(value.usage),
    cost: decimalOrNull(value.cost),
    cost_unknown_attempts: Math.max(0, number(value.cost_unknown_attempts) ?? 0),
    latency: number(value.latency),
    partial: value.partial === true,
    cached: value.cached === true,
    attempts,
    code: codeBelow(value.code)
  };
}
