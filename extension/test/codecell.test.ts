import { describe, expect, it } from 'vitest';

import { SharedCellLike, SharedNotebookLike, writeCodeBelow, writerOf } from '../src/codecell';
import { parsePayload } from '../src/payload';

class Cell implements SharedCellLike {
  constructor(readonly id: string, private source: string, private metadata: Record<string, unknown> = {}) {}
  getSource(): string {
    return this.source;
  }
  setSource(source: string): void {
    this.source = source;
  }
  getMetadata(key: string): unknown {
    return this.metadata[key];
  }
  setMetadata(key: string, value: unknown): void {
    this.metadata[key] = value;
  }
}

class Notebook implements SharedNotebookLike {
  cells: Cell[];
  constructor(...cells: Cell[]) {
    this.cells = cells;
  }
  insertCell(index: number, cell: { source: string; metadata: Record<string, unknown> }): void {
    this.cells.splice(index, 0, new Cell(`new-${this.cells.length}`, cell.source, cell.metadata));
  }
}

describe('-f code written below its cell', () => {
  it('inserts a cell right below the first time, then writes into that cell again', () => {
    const nb = new Notebook(new Cell('load', '%load_ext nbrouter'), new Cell('w', '%%llm fast -f code\nplot it'), new Cell('end', 'x'));
    expect(writeCodeBelow(nb, { source: 'print(1)', cell: 'w' })).toBe('inserted');
    expect(nb.cells.map(c => c.getSource())).toEqual(['%load_ext nbrouter', '%%llm fast -f code\nplot it', 'print(1)', 'x']);
    expect(writerOf(nb.cells[2])).toBe('w');
    // the next run (Run All again): the same cells, the new code in the cell made last time
    expect(writeCodeBelow(nb, { source: 'print(2)', cell: 'w' })).toBe('updated');
    expect(writeCodeBelow(nb, { source: 'print(2)', cell: 'w' })).toBe('unchanged');
    expect(nb.cells.map(c => c.getSource())).toEqual(['%load_ext nbrouter', '%%llm fast -f code\nplot it', 'print(2)', 'x']);
  });

  it('finds its cell wherever it was moved, and leaves other cells alone', () => {
    const made = new Cell('m', 'old', { nbrouter: { code_of: 'w' } });
    const other = new Cell('o', 'mine', { nbrouter: { code_of: 'someone-else' } });
    const nb = new Notebook(made, new Cell('w', '%%llm -f code\n...'), other);
    expect(writeCodeBelow(nb, { source: 'new', cell: 'w' })).toBe('updated');
    expect(nb.cells.map(c => c.getSource())).toEqual(['new', '%%llm -f code\n...', 'mine']);
    expect(writeCodeBelow(nb, { source: 'new', cell: 'elsewhere' })).toBe('no such cell');
    expect(nb.cells).toHaveLength(3);
  });

  it('stamps the cell with the run that wrote it, even when the code did not change', () => {
    const nb = new Notebook(new Cell('w', '%%llm fast -f code\nplot it'));
    expect(writeCodeBelow(nb, { source: 'print(1)', cell: 'w', run: 'r1' })).toBe('inserted');
    expect(nb.cells[1].getMetadata('nbrouter')).toEqual({ code_of: 'w', run: 'r1' });
    expect(writeCodeBelow(nb, { source: 'print(1)', cell: 'w', run: 'r2' })).toBe('unchanged');
    expect(nb.cells[1].getMetadata('nbrouter')).toEqual({ code_of: 'w', run: 'r2' });
    expect(writeCodeBelow(nb, { source: 'print(2)', cell: 'w', run: 'r3' })).toBe('updated');
    expect(nb.cells[1].getMetadata('nbrouter')).toEqual({ code_of: 'w', run: 'r3' });
  });

  it('reads the code from the payload only when it is well formed', () => {
    expect(parsePayload({ attempts: [], code: { source: 'print(1)', cell: 'w', run: 'r' } })?.code).toEqual({ source: 'print(1)', cell: 'w', run: 'r' });
    expect(parsePayload({ attempts: [], code: { source: 'print(1)', cell: 'w' } })?.code).toEqual({ source: 'print(1)', cell: 'w' });
    expect(parsePayload({ attempts: [], code: { source: 1, cell: 'w' } })?.code).toBeNull();
    expect(parsePayload({ attempts: [] })?.code).toBeNull();
  });
});
