/**
 * mailauth, as the gateway uses it: loaded on the first call that needs it, with the DKIM/ARC public
 * key parse memoized and the header scan of its message parser done with `indexOf` (both measured
 * hot spots, see below), and three places where it goes wrong put right at the same seams: key
 * records as dkim-key.ts reads them (`s=`, PKCS#1 keys), a message that ends in its header block
 * (message-end.ts), and the signing time of a signature made without one (below).
 *
 * Loading mailauth costs ~35 MB and ~0.4 s of CPU, so nothing loads it until a check calls one of
 * the functions below: an idle gateway, `portcullis check` and a policy without sender
 * authentication never pay for it. The functions keep mailauth's own names and signatures.
 *
 * mailauth 4.13 turns the key record into a key object on every signature it checks
 * (`createPublicKey`, a PEM export and a schema check: 8–10 % of the gateway's CPU under the edge
 * policy) and offers no option to cache it. The parse is a pure function of the TXT
 * record, so it is memoized by the record's text; the record itself is still asked of the resolver
 * every time, so the DNS cache (and its TTLs) decides when a changed key is seen. The memo holds
 * key objects, so the signature check does not parse the PEM text again either.
 *
 * The seam: mailauth's DKIM verifier and ARC code take `getPublicKey` from `lib/tools.js` when they
 * are first loaded, so the export is replaced before mailauth is loaded — which is why every module
 * of ours reaches mailauth through this one (a Biome rule says so) and why mailauth is loaded with
 * `require` after the patch instead of a hoisted `import`. `test/toolkit/mailauth.test.ts` fails if
 * an upgrade moves the seam, and holds the replaced header scan to mailauth's own on every split of
 * a set of messages.
 */
import { createPublicKey } from "node:crypto";
import { createRequire } from "node:module";
import { LRUCache } from "lru-cache";
import type * as Mailauth from "mailauth";
import { usableKeyRecords } from "./dkim-key.js";
import { type EndingParser, headerFirstFinish } from "./message-end.js";

export type {
  ARCResult,
  DKIMVerifyResult,
  DMARCResult,
  DNSResolver,
  SPFResult,
} from "mailauth";

interface PublicKeyAnswer {
  readonly publicKey: string;
  readonly rr: string;
  readonly modulusLength?: number;
}

type GetPublicKey = (
  type: string,
  name: string,
  minBitLength: number | undefined,
  resolver: Mailauth.DNSResolver | undefined,
) => Promise<PublicKeyAnswer>;

const require = createRequire(import.meta.url);

/** Distinct key records kept parsed; a busy MX sees a few hundred signing keys a day. */
const KEY_CACHE_ENTRIES = 2_000;

const parsedKeys = new LRUCache<string, Promise<PublicKeyAnswer>>({ max: KEY_CACHE_ENTRIES });
let keyParses = 0;

function memoizedKeyLookup(parse: GetPublicKey): GetPublicKey {
  return async (type, name, minBitLength, resolver) => {
    if (!resolver) return parse(type, name, minBitLength, resolver);
    const records = (await resolver(name, "TXT")) as string[][] | undefined;
    // The same records with the same limits parse the same way.
    const cacheKey = `${type}\0${minBitLength ?? ""}\0${JSON.stringify(records ?? null)}`;
    let parsed = parsedKeys.get(cacheKey);
    if (!parsed) {
      keyParses++;
      parsed = parse(type, name, minBitLength, async () => usableKeyRecords(records ?? [])).then((answer) => ({
        ...answer,
        publicKey: pemKeyObject(answer.publicKey),
      }));
      parsedKeys.set(cacheKey, parsed);
    }
    return parsed;
  };
}

/**
 * mailauth hands the PEM text to `crypto.verify`, which parses it again on every call; a key object
 * skips that. It prints as the PEM, because mailauth copies `publicKey.toString()` into its results.
 */
function pemKeyObject(pem: string): string {
  const key = createPublicKey(pem);
  return Object.assign(key, { toString: () => pem }) as unknown as string;
}

/** How many key records have been parsed (not answered from the memo) in this process. */
export function publicKeyParses(): number {
  return keyParses;
}

/** The parts of mailauth's MessageParser that its header scan touches. */
interface MessageParserState {
  state: "header" | "body";
  /** The last bytes seen (up to 4), for a header end that spans two chunks. */
  stateBytes: number[];
  headerChunks: Buffer[];
  headers: unknown;
  messageHeaders(headers: unknown): Promise<void>;
  nextChunk(chunk: Buffer): Promise<void>;
}

type ProcessChunk = (this: MessageParserState, chunk: Buffer) => Promise<void>;

/** Where the blank line that ends the header block ends (its LF) in `chunk`, or -1. */
function headerEnd(carry: readonly number[], chunk: Buffer): number {
  const before = (i: number, back: number) => (i >= back ? chunk[i - back] : carry[carry.length - (back - i)]);
  for (let i = chunk.indexOf(0x0a); i >= 0; i = chunk.indexOf(0x0a, i + 1)) {
    const previous = before(i, 1);
    if (previous === 0x0a || (previous === 0x0d && before(i, 2) === 0x0a)) return i;
  }
  return -1;
}

/**
 * mailauth's MessageParser finds the end of the header block one byte at a time, pushing each byte
 * onto an array and slicing it: ~30 µs and hundreds of small arrays per message, 15–25 % of a DKIM
 * check. This does the same with `indexOf` and ends in the same state.
 */
async function processChunk(this: MessageParserState, chunk: Buffer): Promise<void> {
  if (!chunk?.length) return;
  if (this.state === "header") {
    const end = headerEnd(this.stateBytes, chunk);
    if (end < 0) {
      this.stateBytes = [...this.stateBytes, ...chunk.subarray(Math.max(0, chunk.length - 4))].slice(-4);
      this.headerChunks.push(chunk);
      return;
    }
    this.state = "body";
    const last = end === chunk.length - 1;
    this.headerChunks.push(last ? chunk : chunk.subarray(0, end + 1));
    this.headers = mailauth().parseHeaders(Buffer.concat(this.headerChunks));
    await this.messageHeaders(this.headers);
    if (last) return;
    chunk = chunk.subarray(end + 1);
  }
  await this.nextChunk(chunk);
}

/** The part of mailauth's DKIM signer that its final step reads for the `t=` tag. */
interface SigningParser {
  signTime?: Date | string | number;
  finalize(): Promise<void>;
}

/**
 * mailauth's DKIM signer, given no signing time, reads the clock twice: once for the `t=` of the
 * header field it signs and again for the `t=` of the field it writes (`Math.round(Date.now() / 1000)`
 * each time). When a half second passes between the two (the RSA signature takes 1–2 ms, more on a
 * loaded machine) the written field says one second more than the signed one, and the signature never
 * verifies. dkimSign, DKIM sign streams, the ARC-Message-Signature of createSeal/sealMessage and
 * authenticate's sealing all come here without a time unless their caller passes one. Fixing the time
 * once, before either reading, makes both the same.
 */
function onceTimedFinalize(finalize: (this: SigningParser) => Promise<void>) {
  return function finalizeAtOneTime(this: SigningParser): Promise<void> {
    this.signTime ??= new Date();
    return finalize.call(this);
  };
}

/** The options of mailauth's DKIM signer that the gateway uses (mailauth declares no types for it). */
export interface DkimSignerOptions {
  readonly signatureData: ReadonlyArray<{
    signingDomain: string;
    selector: string;
    privateKey: string;
    canonicalization: string;
  }>;
  /** mailauth's parsed header block (its MessageParser's `headers`). */
  readonly headers: unknown;
  /** The body hash for the signatures' canonicalization, computed in an earlier pass. */
  readonly bodyHash: string;
  readonly signTime: Date;
}

/** mailauth's DKIM signer after `finalize()`: the signature header fields, or why a key failed. */
export interface DkimSigner {
  finalize(): Promise<void>;
  readonly signatureHeaders: string[];
  readonly errors: ReadonlyArray<{ signingDomain?: string; selector?: string; err: Error }>;
}

/** What this module takes from mailauth once loaded. */
interface LoadedMailauth {
  readonly api: typeof Mailauth;
  readonly parseHeaders: (header: Buffer) => unknown;
  readonly DkimSigner: new (options: DkimSignerOptions) => DkimSigner;
  /** mailauth's own header scan, kept for the test that holds ours to it. */
  readonly processChunk: ProcessChunk;
  /** mailauth's own key lookup, kept for the tests that show where it still differs from RFC 6376. */
  readonly getPublicKey: GetPublicKey;
  /** mailauth's own end of a message, kept for the test that shows it still misses a header-only message. */
  readonly finish: (this: EndingParser) => Promise<void>;
  /** mailauth's own final step of its DKIM signer, kept for the test that shows it still reads the clock twice. */
  readonly signerFinalize: (this: SigningParser) => Promise<void>;
  /** False when mailauth's verifier was loaded before this module loaded it, so it kept the unmemoized lookup. */
  readonly keyCacheActive: boolean;
}

let loaded: LoadedMailauth | undefined;

/** mailauth, loaded and patched on the first call (synchronously: `require` of a CommonJS package). */
function mailauth(): LoadedMailauth {
  if (loaded) return loaded;
  const keyCacheActive = require.cache[require.resolve("mailauth/lib/dkim/dkim-verifier.js")] === undefined;
  const tools = require("mailauth/lib/tools.js") as {
    getPublicKey: GetPublicKey;
    parseHeaders(header: Buffer): unknown;
  };
  const getPublicKey = tools.getPublicKey;
  if (keyCacheActive) tools.getPublicKey = memoizedKeyLookup(getPublicKey);
  const { MessageParser } = require("mailauth/lib/dkim/message-parser.js") as {
    MessageParser: { prototype: { processChunk: ProcessChunk; finish(this: EndingParser): Promise<void> } };
  };
  const original = MessageParser.prototype.processChunk;
  const finish = MessageParser.prototype.finish;
  MessageParser.prototype.processChunk = processChunk;
  MessageParser.prototype.finish = headerFirstFinish(tools.parseHeaders);
  const { DkimSigner } = require("mailauth/lib/dkim/dkim-signer.js") as {
    DkimSigner: LoadedMailauth["DkimSigner"] & { prototype: SigningParser };
  };
  const signerFinalize = DkimSigner.prototype.finalize;
  DkimSigner.prototype.finalize = onceTimedFinalize(signerFinalize);
  loaded = {
    api: require("mailauth") as typeof Mailauth,
    parseHeaders: tools.parseHeaders,
    DkimSigner,
    processChunk: original,
    getPublicKey,
    finish,
    signerFinalize,
    keyCacheActive,
  };
  return loaded;
}

/**
 * Loads mailauth now, for a caller about to start lookups side by side: the load blocks the event
 * loop (~0.4 s of CPU), and a lookup whose deadline passes meanwhile would be reported timed out.
 */
export function preloadMailauth(): void {
  mailauth();
}

/**
 * Whether the key memo is in effect: loads mailauth if nothing has yet, and is false when its
 * verifier had been loaded (by a `require` that bypassed this module) before.
 */
export function keyCacheActive(): boolean {
  return mailauth().keyCacheActive;
}

/** mailauth's own header scan, kept for the test that holds ours to it. */
export const mailauthProcessChunk: ProcessChunk = function (this: MessageParserState, chunk: Buffer) {
  return mailauth().processChunk.call(this, chunk);
};

/** mailauth's own key lookup, kept for the tests that show where it still differs from RFC 6376. */
export const mailauthGetPublicKey: GetPublicKey = (...args) => mailauth().getPublicKey(...args);

/** mailauth's own end of a message, kept for the test that shows it still misses a header-only message. */
export const mailauthFinish = function (this: EndingParser) {
  return mailauth().finish.call(this);
};

/** mailauth's own final step of its DKIM signer, kept for the test that shows it still reads the clock twice. */
export const mailauthSignerFinalize = function (this: SigningParser) {
  return mailauth().signerFinalize.call(this);
};

/** A DKIM signer over a header block and body hash already computed, as mailauth's ARC sealer uses it. */
export function createDkimSigner(options: DkimSignerOptions): DkimSigner {
  return new (mailauth().DkimSigner)(options);
}

export const arc: typeof Mailauth.arc = (...args) => mailauth().api.arc(...args);
export const authenticate: typeof Mailauth.authenticate = (...args) => mailauth().api.authenticate(...args);
export const createSeal: typeof Mailauth.createSeal = (...args) => mailauth().api.createSeal(...args);
export const dkimSign: typeof Mailauth.dkimSign = (...args) => mailauth().api.dkimSign(...args);
export const dkimVerify: typeof Mailauth.dkimVerify = (...args) => mailauth().api.dkimVerify(...args);
export const dmarc: typeof Mailauth.dmarc = (...args) => mailauth().api.dmarc(...args);
export const sealMessage: typeof Mailauth.sealMessage = (...args) => mailauth().api.sealMessage(...args);
export const spf: typeof Mailauth.spf = (...args) => mailauth().api.spf(...args);
