import { describe, expect, it } from 'vitest';

import { buildBoard, health, parseStatus, stateText, storeNote, timeLeft } from '../src/board';
import { costText, formatDollars, formatSeconds, parseDollars } from '../src/format';
import { answerMarkdown, DOLLAR, dollarRule, restoreDollars, stripFooter } from '../src/markdown';
import { MIME, parsePayload, ResultPayload } from '../src/payload';
import { parseSpend, spendText, spendTitle } from '../src/spend';
import { barShares, buildResult, summaryParts } from '../src/view';
import fixture from './fixtures/fallback-result.json';

const bundle = fixture as Record<string, unknown>;

function payload(overrides: Partial<ResultPayload> = {}): ResultPayload {
  const base = parsePayload(bundle[MIME]);
  if (base === null) {
    throw new Error('the fixture has no payload');
  }
  return { ...base, ...overrides };
}

describe('the payload', () => {
  it('reads the fixture the kernel wrote', () => {
    const p = payload();
    expect(p.served_by).toBe('sim#default/model-b');
    expect(p.attempts.map(a => a.action)).toEqual(['advance', 'served']);
    expect(p.cost).toBe('0.072');
  });

  it('drops what is not ours and never invents a price', () => {
    expect(parsePayload(null)).toBeNull();
    expect(parsePayload({ attempts: 'no' })).toBeNull();
    const p = parsePayload({ attempts: [{ action: 'launch', cost: 0, latency: -1 }, 7], cost: 'NaN' });
    expect(p?.attempts).toHaveLength(1);
    expect(p?.attempts[0].action).toBe('other');
    expect(p?.attempts[0].cost).toBeNull(); // a number is not the decimal string we send: unknown
    expect(p?.attempts[0].latency).toBe(0);
    expect(p?.cost).toBeNull();
  });
});

describe('numbers', () => {
  it('adds dollars exactly and writes them as the footer does', () => {
    expect(parseDollars('0.1')! + parseDollars('0.2')!).toBe(parseDollars('0.3'));
    expect(formatDollars(parseDollars('0.072')!)).toBe('$0.072000');
    expect(formatDollars(parseDollars('0.0000004')!)).toBe('$0.000000');
    expect(formatDollars(parseDollars('0.0000005')!)).toBe('$0.000001');
    expect(parseDollars(null)).toBeNull();
    expect(parseDollars('1e-3')).toBeNull();
  });

  it('writes times and costs', () => {
    expect(formatSeconds(0.0189)).toBe('19 ms');
    expect(formatSeconds(1.5)).toBe('1.50 s');
    expect(formatSeconds(null)).toBe('');
    expect(costText(null)).toBe('cost unknown');
    expect(costText('0.01', 1)).toBe('$0.010000 + unknown');
  });
});

describe('the session spend', () => {
  it('shows the kernel ledger total, and nothing before the kernel said', () => {
    expect(spendText(null)).toBe('nbrouter: no calls yet');
    expect(spendText(parseSpend({ usd: '0', unknown: 0, calls: 0 }))).toBe('nbrouter: no calls yet');
    expect(spendText(parseSpend({ usd: '0.072001', unknown: 0, calls: 2 }))).toBe('$0.072001 · 2 calls');
    expect(spendText(parseSpend({ usd: '0.000272', unknown: 0, calls: 1 }))).toBe('$0.000272 · 1 call');
  });

  it('shows an unknown price as unknown, never as $0', () => {
    const unknown = parseSpend({ usd: '0', unknown: 1, calls: 1 });
    expect(spendText(unknown)).toBe('cost unknown · 1 call');
    expect(spendText(unknown)).not.toContain('$0');
    const part = parseSpend({ usd: '0.5', unknown: 2, calls: 2 });
    expect(spendText(part)).toBe('$0.500000 + unknown · 2 calls');
    expect(spendTitle(part)).toContain('2 attempts at an unknown price');
  });

  it('refuses what is not the kernel spend', () => {
    expect(parseSpend(null)).toBeNull();
    expect(parseSpend({ usd: 0.5, calls: 1 })).toBeNull();
    expect(parseSpend({ usd: 'NaN', calls: 1 })).toBeNull();
    expect(parseSpend({ usd: '0.1', calls: -3, unknown: 'x' })).toEqual({ usd: '0.1', unknown: 0, calls: 0 });
  });
});

describe('the dollar-sign rule', () => {
  it('shows single dollars as written and keeps real maths', () => {
    expect(dollarRule('costs $5 to $10')).toBe(`costs ${DOLLAR}5 to ${DOLLAR}10`);
    expect(dollarRule('$$E = mc^2$$')).toBe('$$E = mc^2$$');
    expect(dollarRule('inline \\(a^2\\) and \\[b\\]')).toBe('inline \\\\(a^2\\\\) and \\\\[b\\\\]');
    expect(dollarRule('escaped \\$5 and \\\\(x\\\\)')).toBe(`escaped ${DOLLAR}5 and \\\\(x\\\\)`);
  });

  it('leaves code as it is', () => {
    expect(dollarRule('run `echo $HOME` for $5')).toBe(`run \`echo $HOME\` for ${DOLLAR}5`);
    expect(dollarRule('```sh\necho $HOME\n```\n$1')).toBe(`\`\`\`sh\necho $HOME\n\`\`\`\n${DOLLAR}1`);
    expect(dollarRule('an unclosed ` and $2')).toBe(`an unclosed \` and ${DOLLAR}2`);
  });

  it('drops the footer the kernel writes for other front ends', () => {
    const md = bundle['text/markdown'] as string;
    expect(md).toContain('*served by sim#default/model-b');
    expect(stripFooter(md)).not.toContain('served by');
    expect(stripFooter(md).endsWith('`echo $HOME`.')).toBe(true);
    expect(answerMarkdown(md).startsWith(`It costs ${DOLLAR}5 to ${DOLLAR}10 a month.`)).toBe(true);
    expect(stripFooter('no footer here')).toBe('no footer here');
    expect(stripFooter('an *italic* last line*')).toBe('an *italic* last line*');
    // a notebook saved before: the footer folded over the table
    expect(stripFooter('answer\n\n<details><summary>served by x</summary>\n\n| a |\n\n</details>')).toBe('answer');
    expect(stripFooter('cached\n\n*cached · served by x on 2026-11-30 · \\$0 now (\\$0.0012 then)*')).toBe('cached');
  });

  it('puts each literal dollar back in an element of its own, so maths never pairs them', () => {
    const host = document.createElement('div');
    host.innerHTML = `<p>from ${DOLLAR}5 to ${DOLLAR}10</p><a href="http://x/${DOLLAR}y">link</a>`;
    restoreDollars(host);
    expect(host.textContent).toBe('from $5 to $10link');
    expect(host.querySelectorAll('span.nbr-dollar')).toHaveLength(2);
    expect(host.querySelector('a')?.getAttribute('href')).toBe('http://x/$y');
    expect(host.innerHTML).not.toContain(DOLLAR);
  });
});

describe('the result view', () => {
  it('draws one bar per attempt, coloured by its action, sized by its latency', () => {
    const view = buildResult(document, payload());
    expect(view.bars).toHaveLength(2);
    expect(view.bars.map(b => b.className)).toEqual(['nbr-bar nbr-action-advance', 'nbr-bar nbr-action-served']);
    const shares = barShares(payload().attempts);
    expect(shares[0]).toBeGreaterThan(shares[1]); // 19 ms against 1 ms
    expect(shares.reduce((a, b) => a + b, 0)).toBeCloseTo(1);
    expect(view.table.tBodies[0].rows).toHaveLength(2);
  });

  it('shows the hovered attempt row', () => {
    const view = buildResult(document, payload());
    expect(view.tip.hidden).toBe(true);
    view.bars[0].dispatchEvent(new Event('mouseenter'));
    expect(view.tip.hidden).toBe(false);
    expect(view.tip.textContent).toContain('sim#default/model-a');
    expect(view.tip.textContent).toContain('status: 429');
    expect(view.tip.textContent).toContain('kind: rate_limit');
    view.bars[0].dispatchEvent(new Event('mouseleave'));
    expect(view.tip.hidden).toBe(true);
  });

  it('writes the compact line: served by, tokens, cost, time', () => {
    expect(summaryParts(payload())).toEqual(['served by sim#default/model-b', '2 attempts', '42 tokens', '$0.072000', '20 ms']);
    expect(summaryParts(payload({ cost: null, usage: null, partial: true }))).toContain('cost unknown');
    expect(summaryParts(payload({ partial: true }))).toContain('PARTIAL');
  });

  it('puts provider text in as text, never as HTML', () => {
    const p = payload();
    p.attempts[0].note = '<img src=x onerror=alert(1)>';
    const view = buildResult(document, p);
    expect(view.root.querySelector('img')).toBeNull();
    expect(view.table.textContent).toContain('<img src=x onerror=alert(1)>');
  });
});

describe('the status board', () => {
  const status = parseStatus({
    candidates: [
      { candidate: 'sim#default/model-a', breaker: 'closed', hold: 'cooldown', hold_reason: 'rate_limit', hold_left_s: 100,
        requests: 1, errors: 1, error_rate: 1, health: '! cooling down', tone: 'warn' },
      { candidate: 'sim#default/model-b', breaker: 'closed', hold: null, requests: 2, errors: 0, p50_s: 0.02,
        health: '✓ healthy', tone: 'ok' },
      { breaker: 'open' }
    ],
    accounts: [{ account: 'sim#default', hold: null, health: '✓ healthy', tone: 'ok' }],
    warning: null
  });

  it('reads the rows and tells the pool health by the kernel rule', () => {
    expect(status.candidates).toHaveLength(2);
    expect(health(status)).toBe('degraded');
    expect(health(null)).toBe('unknown');
    expect(health(parseStatus({ candidates: [{ candidate: 'x', breaker: 'closed', hold: null, tone: 'ok' }] }))).toBe('ok');
    expect(health(parseStatus({ candidates: [{ candidate: 'x', breaker: 'open', hold: null, tone: 'bad' }] }))).toBe('down');
    // flaky by `%llm status`'s rule: not healthy here either, though nothing is held
    const flaky = parseStatus({ candidates: [{ candidate: 'x', breaker: 'closed', hold: null, requests: 3, errors: 1,
                                                error_rate: 0.33, health: '! flaky', tone: 'warn' }] });
    expect(health(flaky)).toBe('degraded');
    expect(stateText(flaky.candidates[0])).toBe('! flaky · 33% errors');
    expect(stateText(status.candidates[0])).toBe('! cooling down · cooldown: rate_limit · 100% errors');
    expect(timeLeft(100, 40)).toBe('60 s');
  });

  it('says when the shared state is down, and how calls are paced meanwhile', () => {
    const shared = parseStatus({ candidates: [], store: { kind: 'redis', mode: 'shared', warning: null } });
    expect(shared.store).toEqual({ kind: 'redis', mode: 'shared', warning: null });
    expect(storeNote(shared)).toBeNull();
    const local = parseStatus({ store: { kind: 'redis', mode: 'local', warning: 'the shared state is not answering' } });
    expect(storeNote(local)).toBe('shared state down: paced here alone');
    expect(storeNote(parseStatus({ store: { kind: 'sqlite', mode: 'wait', warning: 'locked' } }))).toBe(
      'shared state down: calls wait for it');
    // an older kernel says nothing of it; a malformed store is ignored
    expect(parseStatus({}).store).toBeNull();
    expect(storeNote(parseStatus({ store: 'down' }))).toBeNull();
    expect(storeNote(null)).toBeNull();
  });

  it('shows a shared budget under the tables, as text', () => {
    const withBudget = parseStatus({ ...status, budget: "shared budget 'team': spent $0.420000 of $5.000000 (stop)" });
    const board = buildBoard(document, withBudget, 0, () => undefined);
    expect(board.querySelector('.nbr-board-budget')!.textContent).toBe("shared budget 'team': spent $0.420000 of $5.000000 (stop)");
    expect(buildBoard(document, status, 0, () => undefined).querySelector('.nbr-board-budget')).toBeNull();
    expect(parseStatus({ budget: 42 }).budget).toBeNull();
  });

  it('has a reset button on each held row', () => {
    const reset: string[] = [];
    const board = buildBoard(document, status, 0, key => reset.push(key));
    const rows = [...board.querySelectorAll<HTMLTableRowElement>('tr.nbr-board-row')];
    expect(rows.map(r => r.dataset.key)).toEqual(['sim#default/model-a', 'sim#default/model-b', 'sim#default']);
    const buttons = rows.map(r => r.querySelector('button')!);
    expect(buttons.map(b => b.disabled)).toEqual([false, true, true]);
    buttons[0].click();
    expect(reset).toEqual(['sim#default/model-a']);
    // past 90 s in minutes, rounded up
    expect(rows[0].cells[1].textContent).toBe('! cooling down · cooldown: rate_limit · 100% errors · 2 min left');
    expect(rows[1].cells[1].textContent).toBe('✓ healthy');
    expect(rows.map(r => r.dataset.tone)).toEqual(['warn', 'ok', 'ok']);
  });

  it('lets a name wrap only after # and /', () => {
    const board = buildBoard(document, status, 0, () => undefined);
    const name = board.querySelector<HTMLTableCellElement>('td.nbr-name')!;
    expect(name.textContent).toBe('sim#default/model-a');
    expect([...name.querySelectorAll('.nbr-name-part')].map(p => p.textContent)).toEqual(['sim#', 'default/', 'model-a']);
    expect(name.querySelectorAll('wbr')).toHaveLength(3);
  });
});
