/**
 * The durable spool. Layout of `delivery.spool`:
 *
 *   lock                      pid of the gateway (or CLI) that owns the spool
 *   tmp/                      bodies being received (core/smtp/message.ts); not durable, emptied at start
 *   queue/NNNNNNNNNN.seg      append-only segments of message records (envelope + message bytes)
 *   queue/NNNNNNNNNN.state    per-recipient state of the messages whose record is in that segment
 *   large/ID                  bodies too big to keep in memory: MessageWriter's temp file, renamed
 *   control.sock              the running gateway's queue control socket (portcullis queue …)
 *
 * A segment record is `"PCQ1" | u32 jsonLength | u32 dataLength | u32 crc32(json+data) | json | data`;
 * the JSON holds the envelope, the data the message (our header block + the message from
 * `bodyStart`; for a large message only the header block). A state line is `crc32hex JSON\n` with
 * the whole state of one message, so the last valid line of a message wins and a torn last line is
 * ignored.
 *
 * Durability: `store` resolves only when its record, the segment and (for a large message) the
 * renamed body and its directory are fsynced. State lines are appended with a synchronous `write`
 * on the caller's own turn: once written, the operating system keeps them even if this process is
 * killed the next moment, which is what keeps a message the next hop has just taken from being
 * delivered again after a crash (`recordSettled`). Their fsync is batched (`update` waits for it). Writes of concurrent callers share one writev and
 * one fdatasync per file (group commit, notes §12: batching costs nothing measurable, a file and
 * an fsync per message +60 % CPU). A process writes only to segments it created: after a crash a
 * torn tail stays where it is and reading a segment stops at the first bad record (never one that
 * was acknowledged, since acknowledgement waits for the fsync).
 *
 * A segment and its state file are deleted once every message in them is done. A message whose
 * record appears in two segments (none does today; kept for forward compatibility with compaction)
 * is taken from the newer one.
 */
import { createReadStream, type ReadStream, writeSync } from "node:fs";
import {
  constants,
  type FileHandle,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  unlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { crc32 } from "node:zlib";
import FlatQueue from "flatqueue";
import type { Logger } from "pino";
import type { Reply } from "../contract/decision.js";
import { type EnvelopeDsn, groupBy, type PlannedRecipient } from "../delivery/forward.js";
import type { SpooledMessage } from "../smtp/message.js";
import { randomHex } from "../toolkit/random.js";
import type { SenderEvidence } from "./bounce-policy.js";

export interface StoredEnvelope {
  readonly id: string;
  /** The SMTP transaction that brought the message (for the log), or the message a DSN reports on. */
  readonly origin: string;
  readonly from: string;
  readonly dsn: EnvelopeDsn;
  readonly recipients: readonly PlannedRecipient[];
  readonly arrivedAt: number;
  /** Bytes of the message as it will leave. */
  readonly size: number;
  /** The Message-ID header, for `queue list` and for reconciling. */
  readonly messageId?: string;
  /** What was known about the sender at acceptance: whether a DSN may go to it (core/queue/bounce-policy.ts). */
  readonly evidence?: SenderEvidence;
}

export interface RecipientState {
  readonly status: "pending" | "delivered" | "failed";
  /** The last reply for this recipient, when there was an attempt. */
  readonly reply?: Reply;
  readonly remoteMta?: string;
  readonly at?: number;
}

export interface QueueEntry {
  readonly envelope: StoredEnvelope;
  state: RecipientState[];
  attempts: number;
  /** When the worker may try again (ms since the epoch). */
  nextAt: number;
  readonly location: Location;
}

interface Location {
  readonly segment: number;
  /** Offset of the message bytes (head) in the segment. */
  readonly dataOffset: number;
  readonly dataLength: number;
  /** Large messages: the body file and where in it the outgoing body starts. */
  readonly large?: { readonly bodyStart: number };
}

/** Why a message was not stored; the client hears `452 4.3.1`. */
export class SpoolUnavailable extends Error {
  readonly code = "PORTCULLIS_ERR_SPOOL";
}

const MAGIC = Buffer.from("PCQ1");
const FRAME = 16;
const SEGMENT_BYTES = 16 * 1024 * 1024;
/** Most bytes of just-stored messages kept in memory for their first delivery attempt. */
const FRESH_BYTES = 16 * 1024 * 1024;

function segmentName(seq: number): string {
  return String(seq).padStart(10, "0");
}

/** One open, append-only file. */
interface Appendable {
  readonly path: string;
  readonly handle: FileHandle;
  /** Where the next group-committed write goes (segments; state files are appended to with `appendNow`). */
  offset: number;
  broken: boolean;
}

/** Appends at once with a `write` syscall; a file that took a short or failed write takes no more. */
function appendNow(file: Appendable, bytes: Buffer): void {
  if (file.broken) throw new SpoolUnavailable(`${file.path} failed before`);
  try {
    if (writeSync(file.handle.fd, bytes) !== bytes.length) throw new SpoolUnavailable(`short write to ${file.path}`);
  } catch (error) {
    file.broken = true;
    throw error instanceof SpoolUnavailable ? error : new SpoolUnavailable(`${file.path}: ${(error as Error).message}`);
  }
}

interface Write {
  readonly file: Appendable;
  readonly buffers: Buffer[];
  readonly dirs: readonly string[];
  resolve(offset: number): void;
  reject(error: Error): void;
}

/**
 * Group commit: writes that arrive while a flush is in flight wait and go out together in the next
 * one — one writev per file, then one fdatasync per file and one fsync per directory that gained an
 * entry. Every waiter hears the outcome of the flush that covered its bytes.
 */
class GroupCommit {
  #pending: Write[] = [];
  #flushing: Promise<void> | null = null;
  /** Flushes done and writes they covered, for tests and measurements. */
  readonly stats = { flushes: 0, writes: 0 };

  write(file: Appendable, buffers: Buffer[], dirs: readonly string[] = []): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#pending.push({ file, buffers, dirs, resolve, reject });
      this.#flushing ??= this.#run();
    });
  }

  /** Resolves once what was already written to `file` is on disk (an fdatasync shared with the batch). */
  async sync(file: Appendable): Promise<void> {
    await this.write(file, []);
  }

  async #run(): Promise<void> {
    while (this.#pending.length > 0) {
      const batch = this.#pending;
      this.#pending = [];
      await this.#flush(batch);
    }
    this.#flushing = null;
  }

  async #flush(batch: Write[]): Promise<void> {
    this.stats.flushes++;
    this.stats.writes += batch.length;
    const byFile = groupBy(batch, (write) => write.file);
    const dirs = new Set(batch.flatMap((write) => write.dirs));
    const failed = new Map<Write, Error>();
    const offsets = new Map<Write, number>();
    await Promise.all(
      [...byFile].map(async ([file, writes]) => {
        try {
          if (file.broken) throw new SpoolUnavailable(`${file.path} failed before`);
          const start = file.offset;
          let at = start;
          for (const write of writes) {
            offsets.set(write, at);
            at += write.buffers.reduce((n, b) => n + b.length, 0);
          }
          if (at > start) {
            const { bytesWritten } = await file.handle.writev(
              writes.flatMap((write) => write.buffers),
              start,
            );
            if (bytesWritten !== at - start) throw new SpoolUnavailable(`short write to ${file.path}`);
            file.offset = at;
          }
          await file.handle.datasync();
        } catch (error) {
          // The bytes may be half on disk: nothing more is appended to this file.
          file.broken = true;
          for (const write of writes) failed.set(write, error as Error);
        }
      }),
    );
    try {
      await Promise.all([...dirs].map(syncDirectory));
    } catch (error) {
      for (const write of batch) if (write.dirs.length > 0) failed.set(write, error as Error);
    }
    for (const write of batch) {
      const error = failed.get(write);
      if (error) write.reject(error);
      else write.resolve(offsets.get(write)!);
    }
  }
}

export async function syncDirectory(path: string): Promise<void> {
  const dir = await open(path, constants.O_RDONLY);
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** Owns `<spool>/lock`; a lock left by a process that no longer exists is taken over. */
async function takeLock(dir: string): Promise<void> {
  const path = join(dir, "lock");
  for (let tries = 0; tries < 2; tries++) {
    try {
      await writeFile(path, `${process.pid}\n`, { flag: "wx" });
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    const pid = Number((await readFile(path, "utf8").catch(() => "")).trim());
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && processExists(pid)) {
      throw new SpoolUnavailable(`the spool ${dir} is in use by process ${pid}`);
    }
    await rm(path, { force: true });
  }
  throw new SpoolUnavailable(`cannot lock the spool ${dir}`);
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Sortable, unique queue ids: time (base 36) then randomness. */
export function newQueueId(now: number): string {
  return `${now.toString(36).padStart(9, "0")}${randomHex(5)}`.toUpperCase();
}

function stateLine(entry: QueueEntry, done: boolean): Buffer {
  const json = JSON.stringify(
    done
      ? { id: entry.envelope.id, done: true }
      : { id: entry.envelope.id, state: entry.state, attempts: entry.attempts, nextAt: entry.nextAt },
  );
  return Buffer.from(`${crc32(json).toString(16).padStart(8, "0")} ${json}\n`);
}

interface Segment {
  readonly seq: number;
  /** Null once the process has stopped appending to it (segments of earlier runs). */
  data: Appendable | null;
  state: Appendable | null;
  opening: Promise<Appendable> | null;
  live: number;
  size: number;
}

export interface SpoolOptions {
  readonly log: Logger;
  /** Most bytes the spool may hold (segments plus large bodies). */
  readonly limitBytes?: number;
  /** Rotation size of segments; small values only in tests. */
  readonly segmentBytes?: number;
}

export class Spool {
  readonly #entries = new Map<string, QueueEntry>();
  readonly #segments = new Map<number, Segment>();
  readonly #commit = new GroupCommit();
  /**
   * The stored bytes of messages not yet tried. The first attempt usually follows the store at once,
   * and reading them here spares it opening the segment file again (an open, a read and a
   * close per message). A message leaves this at its first update or completion; large bodies never
   * enter it.
   */
  readonly #fresh = new Map<string, Buffer>();
  #freshBytes = 0;
  /**
   * Message ids by the time they are due (`nextAt`), so the delivery worker finds due messages
   * without walking the queue: with a large deferred backlog, a walk per wake made every new message
   * cost O(queue). A message gets a new place whenever its nextAt is set; a place whose message
   * is gone or has moved since is skipped when it comes up.
   */
  readonly #due = new FlatQueue<string>();
  /** Messages whose done line `recordSettled` already wrote, so `complete` need not write another. */
  readonly #doneRecorded = new Set<string>();
  #active: Segment | null = null;
  #rotating: Promise<Segment> | null = null;
  #nextSeq = 1;
  #bytes = 0;
  #closed = false;

  private constructor(
    readonly dir: string,
    private readonly options: SpoolOptions,
  ) {}

  get queueDir(): string {
    return join(this.dir, "queue");
  }

  get largeDir(): string {
    return join(this.dir, "large");
  }

  /** Group-commit counters: flushes (fsync rounds) and the writes they covered. */
  get commitStats(): { flushes: number; writes: number } {
    return { ...this.#commit.stats };
  }

  /** Opens (creating it if need be) and locks the spool, and reads back every message not yet done. */
  static async open(dir: string, options: SpoolOptions): Promise<Spool> {
    for (const sub of ["", "tmp", "queue", "large"]) await mkdir(join(dir, sub), { recursive: true, mode: 0o700 });
    await takeLock(dir);
    const spool = new Spool(dir, options);
    try {
      await spool.#recover();
    } catch (error) {
      await spool.close();
      throw error;
    }
    return spool;
  }

  /** Puts a message on the schedule at its current nextAt (needed only when nextAt changed without `update`). */
  schedule(entry: QueueEntry): void {
    this.#due.push(entry.envelope.id, entry.nextAt);
  }

  /** When the earliest scheduled message is due, or undefined when nothing is scheduled. */
  nextDueAt(): number | undefined {
    return this.#due.peekValue();
  }

  /** Takes the earliest message due at `now` off the schedule; undefined when none is due. */
  takeDue(now: number): QueueEntry | undefined {
    for (let at = this.#due.peekValue(); at !== undefined && at <= now; at = this.#due.peekValue()) {
      const entry = this.#entries.get(this.#due.pop()!);
      if (entry && entry.nextAt === at) return entry;
    }
    return undefined;
  }

  /** Messages not yet done, oldest first. */
  entries(): QueueEntry[] {
    return [...this.#entries.values()];
  }

  get(id: string): QueueEntry | undefined {
    return this.#entries.get(id);
  }

  get bytes(): number {
    return this.#bytes;
  }

  /**
   * Stores a message durably. `source` is the received message; the stored form is `head` followed
   * by `source` from `bodyStart`. A large message's temporary file is renamed into `large/` rather
   * than copied. Throws SpoolUnavailable (full, unwritable) and then stores nothing.
   */
  async store(input: {
    readonly envelope: Omit<StoredEnvelope, "id" | "size">;
    readonly id?: string;
    readonly head: Buffer;
    readonly source: SpooledMessage | Buffer;
    readonly bodyStart: number;
    readonly state?: RecipientState[];
    readonly attempts?: number;
    readonly nextAt: number;
  }): Promise<QueueEntry> {
    if (this.#closed) throw new SpoolUnavailable("the spool is closed");
    const id = input.id ?? newQueueId(input.envelope.arrivedAt);
    const isFile = !Buffer.isBuffer(input.source) && input.source.path !== null;
    const sourceSize = Buffer.isBuffer(input.source) ? input.source.length : input.source.size;
    const size = input.head.length + sourceSize - input.bodyStart;
    const limit = this.options.limitBytes ?? Number.POSITIVE_INFINITY;
    if (this.#bytes + size > limit) throw new SpoolUnavailable(`the spool is full (${this.#bytes} of ${limit} bytes)`);
    const envelope: StoredEnvelope = { ...input.envelope, id, size };
    const dirs: string[] = [];
    let data: Buffer[];
    if (isFile) {
      const source = input.source as SpooledMessage;
      await this.#adoptLargeBody(source.path!, id);
      dirs.push(this.largeDir);
      data = [input.head];
    } else {
      const bytes = Buffer.isBuffer(input.source) ? input.source : await input.source.buffer();
      data = [input.head, bytes.subarray(input.bodyStart)];
    }
    const json = Buffer.from(
      JSON.stringify({
        envelope,
        state: input.state,
        attempts: input.attempts,
        nextAt: input.nextAt,
        large: isFile ? { bodyStart: input.bodyStart } : undefined,
      }),
    );
    const dataLength = data.reduce((n, b) => n + b.length, 0);
    const frame = Buffer.alloc(FRAME);
    MAGIC.copy(frame, 0);
    frame.writeUInt32BE(json.length, 4);
    frame.writeUInt32BE(dataLength, 8);
    let crc = crc32(json);
    for (const part of data) crc = crc32(part, crc);
    frame.writeUInt32BE(crc, 12);
    try {
      const segment = await this.#writableSegment(dirs);
      const offset = await this.#commit.write(segment.data!, [frame, json, ...data], dirs);
      const entry: QueueEntry = {
        envelope,
        state: input.state ?? envelope.recipients.map(() => ({ status: "pending" as const })),
        attempts: input.attempts ?? 0,
        nextAt: input.nextAt,
        location: {
          segment: segment.seq,
          dataOffset: offset + FRAME + json.length,
          dataLength,
          ...(isFile ? { large: { bodyStart: input.bodyStart } } : {}),
        },
      };
      segment.live++;
      segment.size += FRAME + json.length + dataLength;
      this.#bytes += FRAME + json.length + dataLength + (isFile ? sourceSize : 0);
      this.#entries.set(id, entry);
      this.schedule(entry);
      if (!isFile && this.#freshBytes + dataLength <= FRESH_BYTES) {
        this.#fresh.set(id, data.length === 1 ? data[0] : Buffer.concat(data, dataLength));
        this.#freshBytes += dataLength;
      }
      return entry;
    } catch (error) {
      if (isFile) await rm(join(this.largeDir, id), { force: true });
      throw error instanceof SpoolUnavailable
        ? error
        : new SpoolUnavailable(`cannot write to the spool: ${(error as Error).message}`);
    }
  }

  /** Records the current per-recipient state of a message; resolves once it is fsynced (group-committed). */
  async update(entry: QueueEntry): Promise<void> {
    this.#forgetFresh(entry);
    this.schedule(entry);
    const file = await this.#stateFile(this.#segments.get(entry.location.segment)!);
    appendNow(file, stateLine(entry, false));
    await this.#commit.sync(file);
  }

  /**
   * Writes down at once, before the caller does anything else, the recipients a next hop has just
   * answered for (`entry.state` already says so): the message done when every recipient is
   * delivered, else its state. Only a write, no fsync: the operating system keeps it when the
   * process dies, and losing it in a power loss means a duplicate, never lost mail. Throws
   * SpoolUnavailable when it cannot be written now (the delivery's later bookkeeping tries again).
   */
  recordSettled(entry: QueueEntry): void {
    const id = entry.envelope.id;
    if (!this.#entries.has(id)) return;
    const file = this.#segments.get(entry.location.segment)!.state;
    if (!file || file.broken) throw new SpoolUnavailable(`the state file of ${id} is not open`);
    const done = entry.state.every((s) => s.status === "delivered");
    appendNow(file, stateLine(entry, done));
    if (done) this.#doneRecorded.add(id);
  }

  /** Marks a message done and frees its space; its segment goes once nothing in it is live. */
  async complete(entry: QueueEntry): Promise<void> {
    const id = entry.envelope.id;
    this.#forgetFresh(entry);
    if (!this.#entries.delete(id)) return;
    const segment = this.#segments.get(entry.location.segment)!;
    // Not fsynced, like `recordSettled`'s marks: a lost done line means a duplicate, never lost mail.
    if (!this.#doneRecorded.delete(id)) appendNow(await this.#stateFile(segment), stateLine(entry, true));
    if (entry.location.large) {
      const size = (await stat(join(this.largeDir, id)).catch(() => ({ size: 0 }))).size;
      await rm(join(this.largeDir, id), { force: true });
      this.#bytes -= size;
    }
    segment.live--;
    // A segment still taking records (the active one, or one being retired) is never dropped here.
    if (segment.live === 0 && segment.data === null) await this.#dropSegment(segment);
  }

  #forgetFresh(entry: QueueEntry): void {
    if (this.#fresh.delete(entry.envelope.id)) this.#freshBytes -= entry.location.dataLength;
  }

  /** For a delivery attempt: the bytes themselves while the message is fresh in memory, else `read`. */
  content(entry: QueueEntry): Readable | Buffer {
    return this.#fresh.get(entry.envelope.id) ?? this.read(entry);
  }

  /** The stored message as it leaves: a fresh stream each call. */
  read(entry: QueueEntry): Readable {
    const fresh = this.#fresh.get(entry.envelope.id);
    if (fresh) return Readable.from([fresh], { objectMode: false });
    const { location } = entry;
    const segmentPath = join(this.queueDir, `${segmentName(location.segment)}.seg`);
    const head = (): ReadStream =>
      createReadStream(segmentPath, {
        start: location.dataOffset,
        end: location.dataOffset + location.dataLength - 1,
      });
    if (location.dataLength === 0 && !location.large) return Readable.from([]);
    if (!location.large) return head();
    const body = join(this.largeDir, entry.envelope.id);
    const { bodyStart } = location.large;
    return Readable.from(
      (async function* () {
        if (location.dataLength > 0) yield* head();
        yield* createReadStream(body, { start: bodyStart });
      })(),
    );
  }

  async readAll(entry: QueueEntry, max = Number.POSITIVE_INFINITY): Promise<Buffer> {
    const parts: Buffer[] = [];
    let length = 0;
    const stream = this.read(entry);
    for await (const chunk of stream) {
      parts.push(chunk as Buffer);
      length += (chunk as Buffer).length;
      if (length >= max) {
        stream.destroy();
        break;
      }
    }
    return Buffer.concat(parts).subarray(0, Math.min(length, max));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const segment of this.#segments.values()) {
      await segment.data?.handle.close().catch(() => undefined);
      await segment.state?.handle.close().catch(() => undefined);
    }
    await rm(join(this.dir, "lock"), { force: true });
  }

  async #adoptLargeBody(tempPath: string, id: string): Promise<void> {
    const handle = await open(tempPath, "r+");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tempPath, join(this.largeDir, id));
  }

  /** The segment new records go to; a new one when the active one is full or broken. */
  async #writableSegment(dirs: string[]): Promise<Segment> {
    const active = this.#active;
    const limit = this.options.segmentBytes ?? SEGMENT_BYTES;
    if (active?.data && !active.data.broken && active.data.offset < limit) return active;
    // Concurrent stores share one new segment; the first caller's fsync covers its directory entry.
    this.#rotating ??= this.#rotate(active).finally(() => {
      this.#rotating = null;
    });
    const segment = await this.#rotating;
    dirs.push(this.queueDir);
    return segment;
  }

  async #rotate(active: Segment | null): Promise<Segment> {
    const seq = this.#nextSeq++;
    const path = join(this.queueDir, `${segmentName(seq)}.seg`);
    const handle = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    const segment: Segment = {
      seq,
      data: { path, handle, offset: 0, broken: false },
      state: null,
      opening: null,
      live: 0,
      size: 0,
    };
    this.#segments.set(seq, segment);
    this.#active = segment;
    if (active) void this.#retire(active);
    // Open now: `recordSettled` must be able to write without waiting for an open.
    await this.#stateFile(segment);
    return segment;
  }

  /**
   * A segment that takes no more records. Stores that chose it before the rotation may still have
   * writes queued in the group commit, and a record is live only once its write returned: so the
   * file is closed, and dropped when nothing in it is live, only after a flush queued behind those
   * writes. Closing it earlier made their fdatasync fail (452 for mail already written) and could
   * delete a segment under a record about to be acknowledged.
   */
  async #retire(segment: Segment): Promise<void> {
    const data = segment.data;
    if (data) {
      await this.#commit.sync(data).catch(() => undefined);
      segment.data = null;
      await data.handle.close().catch(() => undefined);
    }
    if (segment.live === 0) await this.#dropSegment(segment);
  }

  /**
   * The segment's state file (opened with the segment, again after a failed write), opened once
   * however many callers ask at the same time.
   */
  #stateFile(segment: Segment): Promise<Appendable> {
    if (segment.state && !segment.state.broken) return Promise.resolve(segment.state);
    segment.opening ??= (async () => {
      const path = join(this.queueDir, `${segmentName(segment.seq)}.state`);
      const handle = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND, 0o600);
      await segment.state?.handle.close().catch(() => undefined);
      segment.state = { path, handle, offset: 0, broken: false };
      return segment.state;
    })().finally(() => {
      segment.opening = null;
    });
    return segment.opening;
  }

  async #dropSegment(segment: Segment): Promise<void> {
    if (!this.#segments.delete(segment.seq)) return;
    await segment.data?.handle.close().catch(() => undefined);
    await segment.state?.handle.close().catch(() => undefined);
    const base = join(this.queueDir, segmentName(segment.seq));
    await unlink(`${base}.seg`).catch(() => undefined);
    await unlink(`${base}.state`).catch(() => undefined);
    this.#bytes -= segment.size;
  }

  async #recover(): Promise<void> {
    const log = this.options.log;
    await rm(join(this.dir, "tmp"), { recursive: true, force: true });
    await mkdir(join(this.dir, "tmp"), { recursive: true, mode: 0o700 });
    const names = await readdir(this.queueDir);
    const seqs = [...new Set(names.map((name) => /^(\d{10})\.(seg|state)$/.exec(name)?.[1]).filter(Boolean))]
      .map(Number)
      .sort((a, b) => a - b);
    for (const seq of seqs) {
      this.#nextSeq = Math.max(this.#nextSeq, seq + 1);
      const base = join(this.queueDir, segmentName(seq));
      const data = await readFile(`${base}.seg`).catch(() => Buffer.alloc(0));
      const segment: Segment = { seq, data: null, state: null, opening: null, live: 0, size: data.length };
      this.#segments.set(seq, segment);
      this.#bytes += data.length;
      const here = new Map<string, QueueEntry>();
      for (const record of readRecords(data)) {
        const { envelope, state, attempts, nextAt, large } = record.json as {
          envelope: StoredEnvelope;
          state?: RecipientState[];
          attempts?: number;
          nextAt?: number;
          large?: { bodyStart: number };
        };
        here.set(envelope.id, {
          envelope,
          state: state ?? envelope.recipients.map(() => ({ status: "pending" as const })),
          attempts: attempts ?? 0,
          nextAt: nextAt ?? envelope.arrivedAt,
          location: { segment: seq, dataOffset: record.dataOffset, dataLength: record.dataLength, large },
        });
      }
      const stateText = await readFile(`${base}.state`, "utf8").catch(() => "");
      for (const line of stateText.split("\n")) {
        const parsed = parseStateLine(line);
        if (!parsed) continue;
        const entry = here.get(parsed.id);
        if (!entry) continue;
        if (parsed.done) {
          here.delete(parsed.id);
        } else {
          entry.state = parsed.state ?? entry.state;
          entry.attempts = parsed.attempts ?? entry.attempts;
          entry.nextAt = parsed.nextAt ?? entry.nextAt;
        }
      }
      for (const [id, entry] of here) {
        const older = this.#entries.get(id);
        if (older) this.#segments.get(older.location.segment)!.live--;
        this.#entries.set(id, entry);
        segment.live++;
      }
    }
    // Large bodies: drop those of finished messages and orphans of a crash before their record.
    for (const name of await readdir(this.largeDir)) {
      const entry = this.#entries.get(name);
      if (!entry?.location.large) {
        await rm(join(this.largeDir, name), { force: true });
        continue;
      }
      this.#bytes += (await stat(join(this.largeDir, name))).size;
    }
    for (const entry of this.entries()) {
      if (entry.location.large && !(await exists(join(this.largeDir, entry.envelope.id)))) {
        log.error({ id: entry.envelope.id }, "queued message lost its body file; dropped");
        this.#entries.delete(entry.envelope.id);
        this.#segments.get(entry.location.segment)!.live--;
      }
    }
    for (const segment of [...this.#segments.values()]) {
      if (segment.live === 0) await this.#dropSegment(segment);
      else await this.#stateFile(segment);
    }
    for (const entry of this.#entries.values()) this.schedule(entry);
    if (this.#entries.size > 0) log.info({ messages: this.#entries.size }, "spool recovered");
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** The valid records of a segment, in order; reading stops at the first torn or corrupt one. */
function* readRecords(data: Buffer): Generator<{ json: unknown; dataOffset: number; dataLength: number }> {
  let at = 0;
  while (at + FRAME <= data.length) {
    if (!data.subarray(at, at + 4).equals(MAGIC)) return;
    const jsonLength = data.readUInt32BE(at + 4);
    const dataLength = data.readUInt32BE(at + 8);
    const end = at + FRAME + jsonLength + dataLength;
    if (end > data.length) return;
    const json = data.subarray(at + FRAME, at + FRAME + jsonLength);
    const body = data.subarray(at + FRAME + jsonLength, end);
    if (crc32(body, crc32(json)) !== data.readUInt32BE(at + 12)) return;
    try {
      yield { json: JSON.parse(json.toString("utf8")), dataOffset: at + FRAME + jsonLength, dataLength };
    } catch {
      return;
    }
    at = end;
  }
}

function parseStateLine(
  line: string,
): { id: string; done?: boolean; state?: RecipientState[]; attempts?: number; nextAt?: number } | undefined {
  const space = line.indexOf(" ");
  if (space !== 8) return undefined;
  const json = line.slice(space + 1);
  if (crc32(json).toString(16).padStart(8, "0") !== line.slice(0, 8)) return undefined;
  try {
    return JSON.parse(json);
  } catch {
    return undefined;
  }
}
