/**
 * `%%llm -f code` in JupyterLab and Notebook 7: the answer's code goes into a cell right below the cell
 * that asked for it, and the next run of that cell writes into the same cell again (found by its
 * metadata, `nbrouter.code_of`) instead of adding one, so a notebook run twice keeps the same cells. The
 * kernel leaves such a cell alone when Run All sends it together with the cell that writes it: the cell
 * carries the stamp of the run that wrote it last (`nbrouter.run`), and a cell sent before this run's code
 * was written in carries an older one (see `skip_queued_code_cell` in nbrouter/notebook/magics.py).
 */

/** What a result payload asks for: write `source` below the cell whose id is `cell`, stamped `run`. */
export interface CodeBelow {
  source: string;
  cell: string;
  run?: string;
}

/** The parts of a shared cell (JupyterLab's YCell) this module reads and writes. */
export interface SharedCellLike {
  readonly id: string;
  getSource(): string;
  setSource(source: string): void;
  getMetadata(key: string): unknown;
  setMetadata(key: string, value: unknown): void;
}

/** The parts of a shared notebook (JupyterLab's YNotebook) this module reads and writes. */
export interface SharedNotebookLike {
  readonly cells: readonly SharedCellLike[];
  insertCell(
    index: number,
    cell: { cell_type: 'code'; source: string; metadata: Record<string, unknown> }
  ): unknown;
}

/** The metadata key under which a written cell names the cell that writes it. */
export const METADATA_KEY = 'nbrouter';

/** The id of the cell that writes `cell`'s code, or null for a cell nbrouter did not make. */
export function writerOf(cell: SharedCellLike): string | null {
  const mark = cell.getMetadata(METADATA_KEY);
  if (typeof mark !== 'object' || mark === null) {
    return null;
  }
  const writer = (mark as Record<string, unknown>).code_of;
  return typeof writer === 'string' ? writer : null;
}

export type Written = 'inserted' | 'updated' | 'unchanged' | 'no such cell';

/**
 * Write the code into the cell made for `code.cell` last time, or insert one right below it.
 *
 * @returns what was done; `no such cell` when the writing cell is not in this notebook
 */
export function writeCodeBelow(notebook: SharedNotebookLike, code: CodeBelow): Written {
  const cells = notebook.cells;
  const writer = cells.findIndex(c => c.id === code.cell);
  if (writer < 0) {
    return 'no such cell';
  }
  const mark = code.run ? { code_of: code.cell, run: code.run } : { code_of: code.cell };
  const made = cells.find(c => writerOf(c) === code.cell);
  if (made !== undefined) {
    // stamped even when the code is the same: the cell now holds this run's answer
    const old = made.getMetadata(METADATA_KEY) as Record<string, unknown>;
    if (old.run !== mark.run) {
      made.setMetadata(METADATA_KEY, { ...old, ...mark });
    }
    if (made.getSource() === code.source) {
      return 'unchanged';
    }
    made.setSource(code.source);
    return 'updated';
  }
  // untrusted: the code comes from a model, not from the person who runs the notebook
  notebook.insertCell(writer + 1, {
    cell_type: 'code',
    source: code.source,
    metadata: { [METADATA_KEY]: mark, trusted: false }
  });
  return 'inserted';
}
