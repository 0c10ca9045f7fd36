/**
 * The outbound role: mail from trusted clients (relay.networks, authenticated) leaves with a DKIM
 * signature for its From domain; mail from anyone else, when an ARC key is configured, leaves
 * ARC-sealed with the results we recorded, so a receiver that trusts us can see past breakage we
 * did not cause. Both reuse the one pass over the message (headers and relaxed body hash).
 */
import { createPrivateKey } from "node:crypto";
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { createDkimSigner, createSeal, definePlugin, type HookContext } from "../../core/index.js";
import { arcVerification, parsedMessage } from "../shared/sender-auth/message.js";
import { DkimSignOptions } from "./schema.js";

interface SigningKey {
  readonly domain: string;
  readonly selector: string;
  readonly pem: string;
}

/** Reads and type-checks a key file; also used by `portcullis doctor` to compare it with DNS. */
export async function loadKey(
  entry: { domain: string; selector: string; key: string },
  dir: string,
  allowed: readonly string[],
): Promise<SigningKey> {
  const path = resolve(dir, entry.key);
  const pem = await readFile(path, "utf8");
  const type = createPrivateKey(pem).asymmetricKeyType ?? "unknown";
  if (!allowed.includes(type)) {
    throw new Error(`dkim-sign: ${path} holds an ${type} key; ${entry.domain} needs ${allowed.join(" or ")}`);
  }
  return { domain: entry.domain, selector: entry.selector, pem };
}

/** The keys of the From domain, else of its closest parent domain that has keys. */
export function keysFor(fromDomain: string, keys: readonly SigningKey[]): SigningKey[] {
  let best: SigningKey[] = [];
  for (const key of keys) {
    const covers = fromDomain === key.domain || fromDomain.endsWith(`.${key.domain}`);
    if (!covers) continue;
    const current = best[0]?.domain.length ?? -1;
    if (key.domain.length > current) best = [key];
    else if (key.domain.length === current) best.push(key);
  }
  return best;
}

async function sign(ctx: HookContext<"queue">, keys: readonly SigningKey[]): Promise<void> {
  const parsed = await parsedMessage(ctx);
  // With several From addresses there is no one domain to sign for.
  if (parsed.headerFrom.length !== 1) return;
  const address = parsed.headerFrom[0].toLowerCase();
  const chosen = keysFor(address.slice(address.lastIndexOf("@") + 1), keys);
  if (chosen.length === 0) return;
  const signer = createDkimSigner({
    // relaxed/relaxed with sha256: the body hash computed in the shared pass is exactly this one.
    signatureData: chosen.map((key) => ({
      signingDomain: key.domain,
      selector: key.selector,
      privateKey: key.pem,
      canonicalization: "relaxed/relaxed",
    })),
    headers: parsed.headers,
    bodyHash: parsed.bodyHash,
    signTime: new Date(ctx.clock.now()),
  });
  await signer.finalize();
  if (signer.errors.length > 0) {
    throw new Error(
      `dkim-sign: ${signer.errors.map((e) => `${e.selector}._domainkey.${e.signingDomain}: ${e.err.message}`).join("; ")}`,
    );
  }
  ctx.transaction.headers.prepend.push(...signer.signatureHeaders);
}

async function seal(ctx: HookContext<"queue">, key: SigningKey): Promise<void> {
  const authResults = ctx.facts.authResults;
  if (!authResults) {
    throw new Error("dkim-sign: ARC sealing needs the auth-results plugin earlier in the pipeline");
  }
  const [parsed, verified] = await Promise.all([parsedMessage(ctx), arcVerification(ctx)]);
  // RFC 8617 §5.1: a chain that already failed is sealed once more (cv=fail) only by the hop that found it broken.
  if (verified.status.result === "fail" && !verified.status.shouldSeal) return;
  const sealed = await createSeal(false, {
    headers: parsed.headers,
    arc: parsed.arc,
    seal: {
      signingDomain: key.domain,
      selector: key.selector,
      privateKey: key.pem,
      bodyHash: parsed.bodyHash,
      i: (typeof verified.i === "number" ? verified.i : 0) + 1,
      cv: verified.status.result,
      authResults: authResults.value,
      signTime: new Date(ctx.clock.now()),
    },
  });
  ctx.transaction.headers.prepend.push(...sealed.headers);
}

export default definePlugin({
  name: "dkim-sign",
  options: DkimSignOptions,
  // It reads the other plugins' findings and records none of its own.
  findings: {},
  async setup(options, services) {
    const keys = await Promise.all(options.keys.map((entry) => loadKey(entry, services.policyDir, ["rsa", "ed25519"])));
    const arcKey = options.arcSeal && (await loadKey(options.arcSeal, services.policyDir, ["rsa"]));
    return {
      async queue(ctx) {
        if (ctx.connection.trusted) await sign(ctx, keys);
        else if (arcKey) await seal(ctx, arcKey);
        return undefined;
      },
    };
  },
});
