/**
 * The action a plugin verdict (or a hook failure) leads to. A policy writes it bare (`defer`: the
 * verdict's default reply) or with a reply template (`{ reject: "550 5.7.1 …" }`); placeholders such
 * as `{client.ip}` stay in the template until the core renders the reply for a transaction.
 */
import { z } from "zod";
import { CONTINUE, type DecidedBy, type Decision, parseReply, ReplySyntaxError, unreachable } from "./decision.js";
import { renderReply, type TemplateScope } from "./render.js";

export type Action =
  | { readonly type: "ignore" }
  | { readonly type: "accept" }
  | { readonly type: "reject" | "defer" | "disconnect"; readonly reply: string | null } // reply template; null = the verdict's default reply
  | { readonly type: "score"; readonly points: number };

type RefusingType = "reject" | "defer" | "disconnect";

/** The forms an action takes in a policy file. */
export type ActionInput =
  | "ignore"
  | "accept"
  | RefusingType
  | { reject: string }
  | { defer: string }
  | { disconnect: string }
  | { score: number };

const BARE_ACTIONS = ["ignore", "accept", "reject", "defer", "disconnect"] as const;

const REPLY_RULES: Record<RefusingType, { allows: (code: number) => boolean; expected: string; example: string }> = {
  reject: { allows: (code) => code >= 500, expected: "a 5xx reply", example: "550 5.7.1 Rejected" },
  defer: { allows: (code) => code >= 400 && code < 500, expected: "a 4xx reply", example: "451 4.7.1 Try again later" },
  // 421 is the one 4xx that closes the session (RFC 5321 §3.8); any 5xx may precede a close.
  disconnect: {
    allows: (code) => code === 421 || code >= 500,
    expected: "421 or a 5xx reply",
    example: "421 4.7.0 Closing",
  },
};

/** Why `text` cannot be the reply of a `type` action; undefined when it can. */
function replyProblem(type: RefusingType, text: string): string | undefined {
  const rule = REPLY_RULES[type];
  try {
    const { code } = parseReply(text);
    if (!rule.allows(code)) {
      return `a ${type} action needs ${rule.expected}, but "${text}" starts with ${code}; e.g. "${rule.example}"`;
    }
    return undefined;
  } catch (error) {
    if (error instanceof ReplySyntaxError) return error.message;
    throw error;
  }
}

function replyText(type: RefusingType) {
  return z
    .string()
    .trim()
    .superRefine((text, ctx) => {
      const problem = replyProblem(type, text);
      if (problem) ctx.addIssue({ code: "custom", message: problem });
    })
    .describe(
      `reply template for ${type}, e.g. "${REPLY_RULES[type].example}"; {client.ip}-style placeholders allowed`,
    );
}

/** Names the mistake instead of zod's generic "Invalid input" when no form of action fits. */
function actionError(input: unknown): string {
  const forms = `use one of ${BARE_ACTIONS.join(", ")}, or { reject | defer | disconnect: "<reply>" }, or { score: <number> }`;
  if (typeof input === "string") return `unknown action "${input}": ${forms}`;
  if (input !== null && typeof input === "object" && !Array.isArray(input)) {
    const keys = Object.keys(input);
    if (keys.length === 0) return `empty action: ${forms}`;
    if (keys.length > 1) return `one action per entry, not several (${keys.join(", ")}): ${forms}`;
    const [key] = keys;
    if (key === "score") return "score needs a number of points, e.g. { score: 5 }";
    if (key in REPLY_RULES) {
      return `${key} needs a reply text, e.g. { ${key}: "${REPLY_RULES[key as RefusingType].example}" }`;
    }
    return `unknown action "${key}": ${forms}`;
  }
  return `expected an action: ${forms}`;
}

export const ActionSchema: z.ZodType<Action, ActionInput> = z
  .union(
    [
      z.enum(BARE_ACTIONS),
      z.strictObject({ reject: replyText("reject") }),
      z.strictObject({ defer: replyText("defer") }),
      z.strictObject({ disconnect: replyText("disconnect") }),
      z.strictObject({ score: z.number().describe("points added to the transaction's score (negative lowers it)") }),
    ],
    { error: (issue) => actionError(issue.input) },
  )
  .transform((input): Action => {
    if (typeof input === "string") {
      return input === "ignore" || input === "accept" ? { type: input } : { type: input, reply: null };
    }
    if ("score" in input) return { type: "score", points: input.score };
    if ("reject" in input) return { type: "reject", reply: input.reject };
    if ("defer" in input) return { type: "defer", reply: input.defer };
    return { type: "disconnect", reply: input.disconnect };
  });

/** The reply of a bare reject/defer/disconnect with no default of its own (also used by rules). */
export const GENERIC_REPLIES: Record<"reject" | "defer" | "disconnect", string> = {
  reject: "550 5.7.1 Rejected by policy",
  defer: "451 4.7.1 Temporarily rejected by policy, try again later",
  disconnect: "421 4.7.0 Closing connection",
};

/** Turns an action into a decision; score actions add points and continue. */
export function actionDecision(
  action: Action,
  by: DecidedBy,
  defaultReply: string | undefined,
  scope: TemplateScope,
  addScore: (points: number, reason: string) => void,
  reason?: string,
): Decision {
  switch (action.type) {
    case "ignore":
      return CONTINUE;
    case "accept":
      return { kind: "accept", by };
    case "score":
      addScore(action.points, `${by.name}${reason ? `: ${reason}` : ""}`);
      return CONTINUE;
    case "reject":
    case "defer":
    case "disconnect": {
      const template = action.reply ?? defaultReply ?? GENERIC_REPLIES[action.type];
      return { kind: action.type, reply: renderReply(template, scope, action.type), by, reason };
    }
    default:
      return unreachable(action);
  }
}
