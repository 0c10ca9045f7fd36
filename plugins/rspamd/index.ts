/**
 * rspamd: content scanning after DATA through Rspamd's HTTP protocol (`POST /checkv2`). The message
 * is streamed from where the gateway holds it (memory or its spool file) to Rspamd, never copied,
 * with the envelope and what we know of the client as request headers; the reply's action is the
 * verdict and its symbols the findings. The header changes Rspamd asks for (its `milter` block, a
 * rewritten Subject) are applied to the delivered message. Connections are kept open and reused.
 * A scan that fails or outlives the hook's deadline throws: the entry's `onError` decides (by
 * default a 451 defer), so nothing passes unscanned because Rspamd was down.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { pipeline } from "node:stream";
import { definePlugin, type HookContext, oneLine, verdict } from "../../core/index.js";
import {
  ACTION_VERDICTS,
  type CheckReply,
  headerChanges,
  parseCheckReply,
  type RspamdFacts,
  RspamdFindings,
  replyFacts,
} from "./reply.js";
import { RspamdOptions } from "./schema.js";

export type { RspamdFacts } from "./reply.js";

declare module "../../core/index.js" {
  interface Facts {
    rspamd: RspamdFacts;
  }
}

/** A reply larger than this is not Rspamd answering a scan (its JSON is kilobytes). */
const MAX_REPLY_BYTES = 4 * 1024 * 1024;

type DataContext = HookContext<"data">;

/**
 * Request header values are written as bytes: a value that Node would take as latin1 goes out as
 * the UTF-8 that Rspamd reads (an internationalized address, HELO or user name), and anything
 * that could end the line is gone before Node sees it.
 */
function headerValue(text: string): string {
  const bytes = Buffer.from(oneLine(text, 998), "utf8");
  return bytes.toString("latin1");
}

/** The envelope and what we know of the client, under the names Rspamd's protocol gives them. */
function requestHeaders(ctx: DataContext, password: string | undefined): Record<string, string | string[]> {
  const { connection, transaction } = ctx;
  const headers: Record<string, string | string[]> = {
    "Content-Length": String(ctx.message.size),
    IP: connection.client.ip,
    From: headerValue(transaction.sender.address || "<>"),
    Rcpt: transaction.recipients.map((recipient) => headerValue(recipient.address)),
    "Queue-Id": headerValue(transaction.id),
    "MTA-Name": headerValue(ctx.hostname),
  };
  if (connection.helo !== null) headers.Helo = headerValue(connection.helo);
  // Rspamd does no reverse lookup of its own: it takes the MTA's word, and "unknown" for none.
  const hostname =
    connection.verifiedName ?? (connection.iprev && connection.iprev.result !== "temperror" ? "unknown" : null);
  if (hostname !== null) headers.Hostname = headerValue(hostname);
  if (connection.authUser !== null) headers.User = headerValue(connection.authUser);
  if (connection.tls) {
    headers["TLS-Version"] = headerValue(connection.tls.protocol);
    headers["TLS-Cipher"] = headerValue(connection.tls.cipher);
  }
  if (password !== undefined) headers.Password = password;
  return headers;
}

function readReply(response: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    response.on("data", (chunk: Buffer) => {
      length += chunk.length;
      if (length > MAX_REPLY_BYTES) response.destroy(new Error(`reply larger than ${MAX_REPLY_BYTES} bytes`));
      else chunks.push(chunk);
    });
    response.once("end", () => resolve(Buffer.concat(chunks)));
    response.once("error", reject);
  });
}

/** Why a reply is not a scan result, from its status and Rspamd's `{ "error": … }` body. */
function statusProblem(status: number, body: Buffer): string {
  let detail = body.toString("utf8");
  try {
    const json = JSON.parse(detail) as { error?: unknown };
    if (typeof json.error === "string") detail = json.error;
  } catch {
    // not JSON: the text itself says it
  }
  return `HTTP ${status}${detail ? `: ${oneLine(detail, 200)}` : ""}`;
}

export default definePlugin({
  name: "rspamd",
  options: RspamdOptions,
  findings: { rspamd: RspamdFindings },
  verdicts: {
    reject: { action: "reject", reply: "554 5.7.1 Message rejected as spam" },
    "soft-reject": { action: "defer", reply: "451 4.7.1 Message temporarily rejected, try again later" },
    greylist: { action: "defer", reply: "451 4.7.1 Greylisted, please try again later" },
    "rewrite-subject": { action: "ignore" },
    "add-header": { action: "ignore" },
    "no-action": { action: "ignore" },
    "too-large": { action: "ignore" },
  },
  setup(options) {
    const { url, password, maxSize, spamHeader, maxConnections } = options;
    const secure = url.protocol === "https:";
    const agentOptions = { keepAlive: true, maxSockets: maxConnections };
    const agent = secure ? new HttpsAgent(agentOptions) : new HttpAgent(agentOptions);
    const send = secure ? httpsRequest : httpRequest;
    const where = `rspamd at ${url.host}`;

    /** One POST of the whole message, streamed from where the gateway holds it. */
    function post(ctx: DataContext): Promise<{ status: number; body: Buffer }> {
      return new Promise((resolve, reject) => {
        const request = send(url, {
          method: "POST",
          agent,
          headers: requestHeaders(ctx, password),
          signal: ctx.signal,
        });
        request.once("response", (response) => {
          readReply(response).then((body) => resolve({ status: response.statusCode ?? 0, body }), reject);
        });
        request.once("error", reject);
        pipeline(ctx.message.stream(), request, (error) => {
          if (error) reject(error);
        });
      });
    }

    async function scan(ctx: DataContext): Promise<CheckReply> {
      let answer: { status: number; body: Buffer };
      try {
        answer = await post(ctx);
      } catch (error) {
        throw new Error(`${where}: ${(error as Error).message}`);
      }
      if (answer.status !== 200) throw new Error(`${where}: ${statusProblem(answer.status, answer.body)}`);
      let json: unknown;
      try {
        json = JSON.parse(answer.body.toString("utf8"));
      } catch {
        throw new Error(`${where}: reply is not JSON: ${oneLine(answer.body.toString("utf8"), 200)}`);
      }
      try {
        return parseCheckReply(json);
      } catch (error) {
        throw new Error(`${where}: ${(error as Error).message}`);
      }
    }

    return {
      async data(ctx) {
        if (ctx.message.size > maxSize) {
          ctx.facts.rspamd = {
            action: null,
            score: null,
            requiredScore: null,
            symbols: [],
            messageId: null,
            message: null,
            skipped: "too-large",
          };
          ctx.log.info(
            { plugin: "rspamd", size: ctx.message.size, maxSize },
            "rspamd: message over maxSize, not scanned",
          );
          return verdict("too-large");
        }
        const reply = await scan(ctx);
        ctx.facts.rspamd = replyFacts(reply);
        const changes = headerChanges(reply, ctx.message.headers, spamHeader);
        if (changes.refused.length > 0) {
          ctx.log.warn(
            { plugin: "rspamd", fields: changes.refused },
            "rspamd: header fields with invalid names left out",
          );
        }
        ctx.transaction.headers.prepend.push(...changes.add);
        if (changes.remove.size > 0) {
          ctx.transaction.headers.remove.push((_name, _value, index) => changes.remove.has(index));
        }
        return verdict(ACTION_VERDICTS[reply.action]);
      },
    };
  },
});
