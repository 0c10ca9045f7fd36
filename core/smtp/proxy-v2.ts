/**
 * PROXY protocol v2 (the binary header HAProxy, AWS NLB and others send). smtp-server parses only
 * the v1 text line, so the gateway reads the first bytes of a connection from a trusted balancer
 * here: a v2 header is parsed and consumed; anything else is put back for smtp-server's v1 parser
 * (which refuses what is not a valid v1 line either).
 *
 * Only called for peers in `server.proxyProtocol`: from anyone else a header is never read, so a
 * client cannot choose its own address.
 */
import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";

const SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const FIXED_LENGTH = 16;
/** Addresses plus a few TLVs (AWS adds a VPC endpoint id); anything larger is not a balancer talking. */
const MAX_LENGTH = 2048;

export interface ProxySocketOptions {
  readonly id: string;
  /** Absent for a LOCAL header (the balancer's own health check): the peer address stands. */
  readonly remoteAddress?: string;
  readonly remotePort?: number;
}

export type ParsedV2 = { kind: "incomplete"; need: number } | { kind: "invalid"; reason: string } | ProxyHeader;

export interface ProxyHeader {
  readonly kind: "header";
  /** Bytes the header takes; what follows is SMTP. */
  readonly length: number;
  readonly source: { readonly address: string; readonly port: number } | null;
}

/** Parses a v2 header at the start of `bytes` (which must start with the v2 signature's first byte). */
export function parseProxyV2(bytes: Buffer): ParsedV2 {
  if (bytes.length < FIXED_LENGTH) {
    const prefix = bytes.subarray(0, Math.min(bytes.length, SIGNATURE.length));
    return prefix.equals(SIGNATURE.subarray(0, prefix.length))
      ? { kind: "incomplete", need: FIXED_LENGTH }
      : { kind: "invalid", reason: "not a PROXY v2 signature" };
  }
  if (!bytes.subarray(0, SIGNATURE.length).equals(SIGNATURE)) return { kind: "invalid", reason: "bad signature" };
  const versionCommand = bytes[12];
  if (versionCommand >> 4 !== 2) return { kind: "invalid", reason: "unsupported version" };
  const command = versionCommand & 0x0f;
  if (command > 1) return { kind: "invalid", reason: "unknown command" };
  const length = FIXED_LENGTH + bytes.readUInt16BE(14);
  if (length > MAX_LENGTH) return { kind: "invalid", reason: "header too long" };
  if (bytes.length < length) return { kind: "incomplete", need: length };
  // LOCAL: the balancer speaks for itself; PROXY with an unspecified or UNIX family: likewise.
  if (command === 0) return { kind: "header", length, source: null };
  const family = bytes[13] >> 4;
  const body = bytes.subarray(FIXED_LENGTH, length);
  if (family === 1 && body.length >= 12) {
    return {
      kind: "header",
      length,
      source: { address: [...body.subarray(0, 4)].join("."), port: body.readUInt16BE(8) },
    };
  }
  if (family === 2 && body.length >= 36) {
    const groups = [...Array(8).keys()].map((i) => body.readUInt16BE(i * 2).toString(16));
    // The URL parser prints the canonical (compressed, lower-case) form.
    const address = new URL(`http://[${groups.join(":")}]`).hostname.slice(1, -1);
    return { kind: "header", length, source: { address, port: body.readUInt16BE(32) } };
  }
  if (family === 1 || family === 2) return { kind: "invalid", reason: "address block too short" };
  return { kind: "header", length, source: null };
}

/**
 * Reads a v2 header from a fresh socket. Calls back with "v1" (bytes put back) when the first byte
 * is not the start of a v2 signature, with the socket options smtp-server expects for a v2 header,
 * or with an error after destroying the socket.
 */
export function readProxyHeader(
  socket: Socket,
  callback: (err: Error | null, result?: "v1" | ProxySocketOptions) => void,
): void {
  let buffered = Buffer.alloc(0);
  let finished = false;
  const finish = (err: Error | null, result?: "v1" | ProxySocketOptions) => {
    if (finished) return;
    finished = true;
    socket.removeListener("readable", onReadable);
    socket.removeListener("error", onError);
    socket.removeListener("end", onEnd);
    socket.removeListener("close", onEnd);
    if (err) {
      socket.on("error", () => undefined);
      socket.destroy();
    }
    callback(err, result);
  };
  const onError = (err: Error) => finish(err);
  const onEnd = () => finish(new Error("connection closed before the PROXY header"));
  const onReadable = () => {
    for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
      buffered = Buffer.concat([buffered, chunk]);
    }
    if (buffered.length === 0) return;
    if (buffered[0] !== SIGNATURE[0]) {
      socket.unshift(buffered);
      return finish(null, "v1");
    }
    const parsed = parseProxyV2(buffered);
    if (parsed.kind === "incomplete") return;
    if (parsed.kind === "invalid") return finish(new Error(`invalid PROXY v2 header: ${parsed.reason}`));
    const rest = buffered.subarray(parsed.length);
    if (rest.length > 0) socket.unshift(rest);
    const id = BigInt(`0x${randomBytes(10).toString("hex")}`)
      .toString(32)
      .padStart(16, "0");
    finish(null, parsed.source ? { id, remoteAddress: parsed.source.address, remotePort: parsed.source.port } : { id });
  };
  socket.on("readable", onReadable);
  socket.on("error", onError);
  socket.on("end", onEnd);
  socket.on("close", onEnd);
}
