/**
 * Final delivery into a Maildir (the `maildir:` route). The message is on disk under `new/` and
 * that directory entry is durable before we report it delivered: written to `tmp/`, fsynced, renamed,
 * then `new/` fsynced.
 *
 * One file per message, whatever the number of recipients: the route names one mailbox, and the
 * recipients are listed in the delivery log rather than copied. The bytes are kept as received
 * (CRLF line ends included; Dovecot and Courier read such files fine).
 */
import { constants, type FileHandle, mkdir, open, rename, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { headerFieldBytes, oneLine } from "../toolkit/client-text.js";
import { type DeliveryResult, sameForAll } from "./result.js";

export interface MaildirEnvelope {
  readonly from: string;
  readonly to: readonly string[];
}

let sequence = 0;

/**
 * Writes `message` into the Maildir at `root` (an absolute path; `tmp/`, `new/`, `cur/` are created
 * when missing) with `Return-Path: <returnPath>` prepended: RFC 5321 §4.4 gives that header to the
 * final delivery, and this is the only route that makes one. A failure (EACCES, ENOSPC, a broken
 * source stream…) defers every recipient and leaves nothing behind in `tmp/`.
 */
export async function deliverMaildir(
  root: string,
  envelope: MaildirEnvelope,
  message: Readable,
  options: { readonly returnPath: string },
): Promise<DeliveryResult> {
  const nextHop = `maildir:${root}`;
  const name = uniqueName();
  const tmpPath = join(root, "tmp", name);
  let file: FileHandle | undefined;
  try {
    for (const sub of ["tmp", "new", "cur"]) await mkdir(join(root, sub), { recursive: true, mode: 0o700 });
    // O_EXCL: a name collision fails loudly instead of overwriting another message.
    file = await open(tmpPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    // Angle brackets inside the address would end the path early for a reader of the field.
    await file.write(headerFieldBytes([`Return-Path: <${options.returnPath.replace(/[<>]/g, "")}>`]));
    for await (const chunk of message) await file.write(chunk as Buffer);
    await file.sync();
    await file.close();
    file = undefined;
    await rename(tmpPath, join(root, "new", name));
    await syncDirectory(join(root, "new"));
    return sameForAll(envelope.to, { code: 250, enhanced: "2.0.0", text: `Delivered to maildir as ${name}` }, nextHop);
  } catch (error) {
    message.destroy();
    await file?.close().catch(() => {});
    await unlink(tmpPath).catch(() => {});
    const code = (error as { code?: unknown }).code;
    const reason = typeof code === "string" ? code : oneLine(String(error), 100);
    return sameForAll(
      envelope.to,
      { code: 451, enhanced: "4.3.0", text: `Local delivery failed (${reason})` },
      nextHop,
    );
  }
}

/** `time.MusecPpidQseq.host` (the Dovecot form): unique per process, and pids differ between processes. */
function uniqueName(): string {
  const ms = Date.now();
  sequence += 1;
  const usec = (ms % 1000) * 1000;
  // "/" and ":" would break the path and the `:2,` info suffix; the Maildir spec escapes them so.
  const host = hostname().replace(/\//g, "\\057").replace(/:/g, "\\072");
  return `${Math.floor(ms / 1000)}.M${usec}P${process.pid}Q${sequence}.${host}`;
}

async function syncDirectory(path: string): Promise<void> {
  const dir = await open(path, constants.O_RDONLY);
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
