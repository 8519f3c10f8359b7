/**
 * One notebook's nbrouter session in the front end: the session's spend and the pool's status as its
 * kernel sends them through the `nbrouter` comm (through which the status board also resets), and the
 * code of `-f code` results written into the cell below their cell.
 */

import { NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { BoardStatus, parseStatus } from './board';
import { writeCodeBelow } from './codecell';
import { MIME, parsePayload } from './payload';
import { parseSpend, SessionSpend } from './spend';

export const COMM_TARGET = 'nbrouter';

const RESULT_MESSAGES = new Set(['display_data', 'update_display_data', 'execute_result']);

export class NotebookSession {
  /** the session's spend as the kernel's ledger counts it (null until the kernel said) */
  spend: SessionSpend | null = null;
  /** the last status the kernel sent, and when (ms since the epoch) */
  status: BoardStatus | null = null;
  fetchedAt = 0;
  /** the kernel's last error reply, in words */
  error: string | null = null;
  /** the kernel has nbrouter loaded (its comm is open, or one of its results arrived) */
  loaded = false;
  /** a request is out and not answered yet */
  waiting = false;

  private comm: Kernel.IComm | null = null;
  private kernel: Kernel.IKernelConnection | null = null;
  private nextId = 1;
  /** the results handled already (a streamed one arrives as several updates of one display) */
  private readonly seen = new Set<string>();
  private readonly _changed = new Signal<this, void>(this);

  constructor(readonly panel: NotebookPanel) {
    const context = panel.sessionContext;
    context.iopubMessage.connect(this.onIopub, this);
    context.kernelChanged.connect((_, args) => this.hook(args.newValue), this);
    context.statusChanged.connect((_, status) => {
      if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
        this.forget(); // a new kernel process is a new session: nothing loaded, nothing spent
      }
    }, this);
    this.hook(context.session?.kernel ?? null);
  }

  /** Emitted whenever the spend, the status or `loaded` changes. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Ask the kernel for the status board's rows; false when there is no comm. */
  refresh(): boolean {
    return this.request({ request: 'status' });
  }

  /** Ask the kernel to clear a candidate's or account's cooldown, lock and breaker. */
  reset(key: string): boolean {
    return this.request({ request: 'reset', key });
  }

  dispose(): void {
    Signal.clearData(this);
    this.comm = null;
    this.kernel = null;
  }

  private request(data: Record<string, string>): boolean {
    const comm = this.comm;
    if (comm === null || comm.isDisposed) {
      return false;
    }
    this.waiting = true;
    comm.send({ ...data, id: this.nextId++ });
    return true;
  }

  private hook(kernel: Kernel.IKernelConnection | null): void {
    this.forget();
    this.kernel = kernel;
    if (kernel === null) {
      return;
    }
    // the kernel opens a `nbrouter` comm when `%load_ext nbrouter` runs
    kernel.registerCommTarget(COMM_TARGET, (comm, msg) => {
      this.adopt(comm);
      this.onData(msg.content.data);
    });
    void this.probe(kernel);
  }

  /** After a page reload the kernel's comm is still open: if so, open one of ours. */
  private async probe(kernel: Kernel.IKernelConnection): Promise<void> {
    try {
      const reply = await kernel.requestCommInfo({ target_name: COMM_TARGET });
      const content = reply.content;
      if (kernel !== this.kernel || this.comm !== null || content.status !== 'ok') {
        return;
      }
      if (Object.keys(content.comms).length > 0) {
        const comm = kernel.createComm(COMM_TARGET);
        this.adopt(comm);
        this.waiting = true;
        comm.open({ request: 'status', id: this.nextId++ });
      }
    } catch {
      // no kernel, or it went away: the item stays hidden
    }
  }

  private adopt(comm: Kernel.IComm): void {
    this.comm = comm;
    comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => this.onData(msg.content.data);
    comm.onClose = () => {
      if (this.comm === comm) {
        this.comm = null;
        this.loaded = false;
        this._changed.emit();
      }
    };
    this.loaded = true;
    this._changed.emit();
  }

  private onData(data: unknown): void {
    if (typeof data !== 'object' || data === null) {
      return;
    }
    const d = data as Record<string, unknown>;
    const spend = parseSpend(d.spend);
    if (spend !== null) {
      this.spend = spend;
    }
    if ('hello' in d) {
      this._changed.emit();
      this.refresh();
      return;
    }
    if (d.reply === 'spend') {
      this._changed.emit();
      return;
    }
    if (d.reply === 'status' || d.reply === 'reset') {
      this.status = parseStatus(d);
      this.fetchedAt = Date.now();
      this.error = null;
    } else if (d.reply === 'error') {
      this.error = typeof d.message === 'string' ? d.message : 'the kernel could not answer';
    } else {
      return;
    }
    this.waiting = false;
    this._changed.emit();
  }

  private onIopub(_: unknown, msg: KernelMessage.IMessage): void {
    if (!RESULT_MESSAGES.has(msg.header.msg_type)) {
      return;
    }
    const content = msg.content as { data?: Record<string, unknown>; transient?: { display_id?: string } };
    const payload = content.data ? parsePayload(content.data[MIME]) : null;
    if (payload === null) {
      return;
    }
    // a streamed answer arrives as updates of one display: its final bundle is handled once
    const key = content.transient?.display_id ?? msg.header.msg_id;
    if (this.seen.has(key)) {
      return;
    }
    this.seen.add(key);
    if (payload.code !== null) {
      // live results only: a saved output shown again (a reload) writes nothing
      const shared = this.panel.context.model.sharedModel;
      writeCodeBelow(shared as unknown as Parameters<typeof writeCodeBelow>[0], payload.code);
    }
    this.loaded = true;
    this._changed.emit();
    this.refresh(); // the pool changed: the health dot follows
  }

  private forget(): void {
    this.comm = null;
    this.loaded = false;
    this.status = null;
    this.error = null;
    this.waiting = false;
    this.spend = null;
    this.seen.clear();
    this._changed.emit();
  }
}
