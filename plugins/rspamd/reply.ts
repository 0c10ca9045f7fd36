/**
 * What Rspamd's /checkv2 reply means for us, as pure functions: the findings it gives, and the
 * header changes its `milter` block (and a `rewrite subject` action) ask for. Everything Rspamd
 * sends back may echo what the client wrote (a Subject, a sender, a symbol option quoting a header),
 * so texts are cut to one line here and header fields are written only through the core, which
 * encodes them with its one header encoder.
 */
import { oneLine, z } from "../../core/index.js";
import { FIELD_NAME } from "./schema.js";

/** Rspamd's actions, as its reply spells them (with spaces). */
export const RSPAMD_ACTIONS = [
  "reject",
  "soft reject",
  "rewrite subject",
  "add header",
  "greylist",
  "no action",
] as const;

export type RspamdAction = (typeof RSPAMD_ACTIONS)[number];

/** The verdict of each action: its name in a policy's `on:` map (no spaces, like every verdict). */
export const ACTION_VERDICTS = {
  reject: "reject",
  "soft reject": "soft-reject",
  "rewrite subject": "rewrite-subject",
  "add header": "add-header",
  greylist: "greylist",
  "no action": "no-action",
} as const satisfies Record<RspamdAction, string>;

/** Actions after which a message the policy still lets through is marked as spam. */
const SPAM_ACTIONS: ReadonlySet<RspamdAction> = new Set(["reject", "rewrite subject", "add header"]);

export const RspamdFindings = z
  .object({
    action: z
      .enum(RSPAMD_ACTIONS)
      .nullable()
      .describe(
        "what Rspamd asked for (reject, soft reject, rewrite subject, add header, greylist, no action); null when not scanned",
      ),
    score: z.number().nullable().describe("the message's score; null when not scanned"),
    requiredScore: z.number().nullable().describe("Rspamd's score for reject; null when not scanned"),
    symbols: z
      .array(
        z.object({
          name: z.string().describe("the symbol (rule) that matched, e.g. BAYES_SPAM"),
          score: z.number().describe("what it added to the score"),
          options: z.array(z.string()).describe("what it found, e.g. the listed IP or the matched domain"),
        }),
      )
      .describe("every symbol that matched, highest score first"),
    messageId: z.string().nullable().describe("the Message-ID as Rspamd read it (for its log and history)"),
    message: z.string().nullable().describe("the SMTP reply text a module of Rspamd proposed (messages.smtp_message)"),
    skipped: z
      .enum(["too-large"])
      .nullable()
      .describe("why the message was not scanned: too-large (over maxSize); null when it was"),
  })
  .readonly();

export type RspamdFacts = z.output<typeof RspamdFindings>;

/** The parts of a /checkv2 reply we read; anything else in it is ignored. */
const MilterField = z.union([
  z.string(),
  z.object({ value: z.string(), order: z.number().optional() }),
  z.array(z.union([z.string(), z.object({ value: z.string(), order: z.number().optional() })])),
]);

const CheckReply = z.object({
  action: z.enum(RSPAMD_ACTIONS),
  score: z.number(),
  required_score: z.number(),
  symbols: z
    .record(z.string(), z.object({ score: z.number().optional(), options: z.array(z.string()).optional() }))
    .default({}),
  subject: z.string().optional(),
  "message-id": z.string().optional(),
  messages: z.object({ smtp_message: z.string().optional() }).optional(),
  milter: z
    .object({
      add_headers: z.record(z.string(), MilterField).optional(),
      remove_headers: z.record(z.string(), z.union([z.number(), z.array(z.number())])).optional(),
      spam_header: z.string().optional(),
    })
    .optional(),
});

export type CheckReply = z.output<typeof CheckReply>;

/** The reply's JSON as Rspamd's protocol defines it, or an error saying what is wrong with it. */
export function parseCheckReply(json: unknown): CheckReply {
  const parsed = CheckReply.safeParse(json);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  throw new Error(`unexpected reply: ${issue?.path.join(".") || "(top)"}: ${issue?.message}`);
}

export function replyFacts(reply: CheckReply): RspamdFacts {
  const symbols = Object.entries(reply.symbols)
    .map(([name, symbol]) => ({
      name: oneLine(name, 128),
      score: symbol.score ?? 0,
      options: (symbol.options ?? []).map((option) => oneLine(option, 256)),
    }))
    .sort((a, b) => b.score - a.score || a.name.localeCompare(b.name));
  const message = reply.messages?.smtp_message;
  return {
    action: reply.action,
    score: reply.score,
    requiredScore: reply.required_score,
    symbols,
    messageId: reply["message-id"] === undefined ? null : oneLine(reply["message-id"], 256),
    message: message === undefined ? null : oneLine(message, 256),
    skipped: null,
  };
}

/** The header changes a reply asks for, in the shape the core's `HeaderEdits` takes them. */
export interface HeaderChanges {
  /** `Name: value` fields to add, in Rspamd's order (lowest `order` first). */
  readonly add: string[];
  /** Positions in `Message.headers` of the received fields to remove. */
  readonly remove: ReadonlySet<number>;
  /** Field names Rspamd sent that are not valid names; they are left out and logged. */
  readonly refused: string[];
}

/**
 * The milter block's `add_headers` and `remove_headers`, the subject of `rewrite subject`, and the
 * spam header of a spam action, against the header fields as received. Added fields go on top of
 * the message (after our Received): where Rspamd's `order` would put them among the received fields
 * matters to no reader, their order among themselves is kept.
 */
export function headerChanges(
  reply: CheckReply,
  received: ReadonlyArray<{ readonly name: string }>,
  spamHeader: string | null,
): HeaderChanges {
  const add: Array<{ field: string; order: number }> = [];
  const remove = new Set<number>();
  const refused: string[] = [];
  const named = (name: string) => {
    if (FIELD_NAME.test(name)) return true;
    refused.push(oneLine(name, 80));
    return false;
  };
  const removeOccurrences = (name: string, order: number) => {
    const positions = received.flatMap((field, index) =>
      field.name.toLowerCase() === name.toLowerCase() ? [index] : [],
    );
    // 0: every occurrence; N: the Nth from the top; -N: the Nth from the bottom (Rspamd's protocol).
    const chosen = order === 0 ? positions : [order > 0 ? positions[order - 1] : positions[positions.length + order]];
    for (const index of chosen) if (index !== undefined) remove.add(index);
  };

  for (const [name, orders] of Object.entries(reply.milter?.remove_headers ?? {})) {
    if (!named(name)) continue;
    for (const order of Array.isArray(orders) ? orders : [orders]) removeOccurrences(name, order);
  }
  for (const [name, value] of Object.entries(reply.milter?.add_headers ?? {})) {
    if (!named(name)) continue;
    for (const one of Array.isArray(value) ? value : [value]) {
      const field = typeof one === "string" ? { value: one } : one;
      add.push({ field: `${name}: ${field.value}`, order: field.order ?? -1 });
    }
  }
  if (reply.action === "rewrite subject" && reply.subject !== undefined) {
    removeOccurrences("Subject", 0);
    add.push({ field: `Subject: ${oneLine(reply.subject, 998)}`, order: -1 });
  }
  const spamName = reply.milter?.spam_header ?? spamHeader;
  if (spamName !== null && SPAM_ACTIONS.has(reply.action) && named(spamName)) {
    removeOccurrences(spamName, 0);
    add.push({ field: `${spamName}: Yes`, order: -1 });
  }
  // Rspamd's -1 means "at the end": after every field it placed by position.
  const rank = (order: number) => (order < 0 ? Number.MAX_SAFE_INTEGER : order);
  const ordered = add
    .map((entry, at) => ({ ...entry, at }))
    .sort((a, b) => rank(a.order) - rank(b.order) || a.at - b.at);
  return { add: ordered.map((entry) => entry.field), remove, refused };
}
