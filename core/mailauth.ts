/**
 * mailauth, as the gateway uses it: with the DKIM/ARC public key parse memoized.
 *
 * mailauth 4.13 turns the key record into a key object on every signature it checks
 * (`createPublicKey`, a PEM export and a schema check: 8–10 % of the gateway's CPU under the edge
 * policy, issue 11) and offers no option to cache it. The parse is a pure function of the TXT
 * record, so it is memoized by the record's text; the record itself is still asked of the resolver
 * every time, so the DNS cache (and its TTLs) decides when a changed key is seen. The memo holds
 * key objects, so the signature check does not parse the PEM text again either.
 *
 * The seam: mailauth's DKIM verifier and ARC code take `getPublicKey` from `lib/tools.js` when they
 * are first loaded, so the export is replaced before mailauth is loaded — which is why every module
 * of ours reaches mailauth through this one (a Biome rule says so) and why this file loads mailauth
 * with `require` after the patch instead of a hoisted `import`. `test/mailauth.test.ts` fails if
 * an upgrade moves the seam.
 */
import { createPublicKey } from "node:crypto";
import { createRequire } from "node:module";
import { LRUCache } from "lru-cache";
import type * as Mailauth from "mailauth";

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
const tools = require("mailauth/lib/tools.js") as { getPublicKey: GetPublicKey };
const verifierPath = require.resolve("mailauth/lib/dkim/dkim-verifier.js");

/** Distinct key records kept parsed; a busy MX sees a few hundred signing keys a day. */
const KEY_CACHE_ENTRIES = 2_000;

const parsedKeys = new LRUCache<string, Promise<PublicKeyAnswer>>({ max: KEY_CACHE_ENTRIES });
let keyParses = 0;

function memoizedKeyLookup(parse: GetPublicKey): GetPublicKey {
  return async (type, name, minBitLength, resolver) => {
    if (!resolver) return parse(type, name, minBitLength, resolver);
    const records = await resolver(name, "TXT");
    // mailauth reads only the first record; the same text with the same limits parses the same way.
    const cacheKey = `${type}\0${minBitLength ?? ""}\0${JSON.stringify(records?.[0] ?? null)}`;
    let parsed = parsedKeys.get(cacheKey);
    if (!parsed) {
      keyParses++;
      parsed = parse(type, name, minBitLength, async () => records).then((answer) => ({
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

/** False when mailauth was loaded before this module, so its verifier kept the unmemoized lookup. */
export const keyCacheActive = require.cache[verifierPath] === undefined;
if (keyCacheActive) tools.getPublicKey = memoizedKeyLookup(tools.getPublicKey);

/** How many key records have been parsed (not answered from the memo) in this process. */
export function publicKeyParses(): number {
  return keyParses;
}

const mailauth = require("mailauth") as typeof Mailauth;

export const { arc, authenticate, createSeal, dkimSign, dkimVerify, dmarc, sealMessage, spf } = mailauth;
