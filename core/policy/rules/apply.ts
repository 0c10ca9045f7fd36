/**
 * Runs the compiled rules after the hooks of a phase and carries out what the matching rules do.
 * The session calls `applyRules` once per phase that no hook ended; everything a rule changes goes
 * through the same contexts hooks write to, so the trace, the summary log line and delivery see it.
 *
 * Order: rules run in policy order. A rule acts at most once per transaction (once per connection
 * in the connect and helo phases; in the rcpt phase a rule that refuses or names `recipient` acts
 * once per recipient). Non-deciding actions apply and evaluation goes on; the first matching rule
 * that decides ends it. After `accept` or `quarantine` no later rule acts on the transaction.
 * A rule in `mode: observe` logs what it would do, is traced, and changes nothing.
 */

import { GENERIC_REPLIES } from "../../contract/actions.js";
import type { Phase, Services, TraceEntry } from "../../contract/api.js";
import { CONTINUE, type DecidedBy, type Decision } from "../../contract/decision.js";
import { renderReply, renderTemplate, type TemplateScope } from "../../contract/render.js";
import type { PhaseInput } from "../../engine/pipeline.js";
import { type CompiledRule, describeActions, type RuleSet, type RuleView } from "./compile.js";
import type { RuleAction } from "./schema.js";

/** What rules have done so far on a connection or a transaction. */
export interface RuleState {
  /** Keys of rules that acted (a rule's name; name and recipient for per-recipient rules). */
  readonly fired: Set<string>;
  /** Pipeline entries whose hooks no longer run (`skip`). */
  readonly skip: Set<string>;
  /** An `accept` or `quarantine` ended rule evaluation. */
  done: boolean;
}

export function connectionRuleState(): RuleState {
  return { fired: new Set(), skip: new Set(), done: false };
}

/** A transaction starts from what the connection's rules did (skips, accept, rules that acted). */
export function transactionRuleState(connection: RuleState): RuleState {
  return { fired: new Set(connection.fired), skip: new Set(connection.skip), done: connection.done };
}

/** The view rules test, taken from the contexts of a phase. */
export function ruleView(input: PhaseInput): RuleView {
  const { connection, transaction, recipient } = input;
  const address = (a: { address: string; local: string; domain: string }) => ({
    address: a.address,
    local: a.local,
    domain: a.domain,
  });
  return {
    client: { ip: connection.client.ip, name: connection.verifiedName },
    trusted: connection.trusted,
    role: connection.role,
    helo: input.helo ?? connection.helo,
    tls: connection.tls !== null,
    authUser: connection.authUser,
    sender: transaction ? address(transaction.sender) : null,
    recipient: recipient ? address(recipient) : null,
    recipients: transaction?.recipients.map((r) => r.address) ?? [],
    score: transaction?.score ?? connection.score,
    tags: transaction ? [...transaction.tags] : [],
    facts: transaction?.facts ?? connection.facts,
  };
}

function fireKey(rule: CompiledRule, phase: Phase, input: PhaseInput): string {
  return phase === "rcpt" && rule.perRecipient && input.recipient
    ? `${rule.name}\n${input.recipient.address}`
    : rule.name;
}

/**
 * Evaluates the rules of `phase` and applies the matching ones. Returns the deciding rule's
 * decision, or CONTINUE. Pure with respect to everything but the contexts in `input` and `state`.
 */
export function applyRules(
  rules: RuleSet,
  phase: Phase,
  input: PhaseInput,
  state: RuleState,
  services: Pick<Services, "log">,
  trace: TraceEntry[],
): Decision {
  const candidates = rules.byPhase[phase];
  if (state.done || candidates.length === 0) return CONTINUE;
  const { connection, transaction } = input;
  for (const rule of candidates) {
    const key = fireKey(rule, phase, input);
    // A rule that acted for the whole transaction (before rcpt) does not act again per recipient.
    if (state.fired.has(key) || state.fired.has(rule.name)) continue;
    const started = performance.now();
    // Rebuilt per rule: an earlier rule's score or tag is visible to the next one.
    if (!rule.matches(ruleView(input))) continue;
    state.fired.add(key);
    const summary = describeActions(rule.actions);
    const record = (decision: Decision["kind"]) =>
      trace.push({
        plugin: rule.name,
        source: "rule",
        phase,
        verdict: rule.mode === "observe" ? `observe: ${summary}` : summary,
        decision,
        ms: Math.round((performance.now() - started) * 100) / 100,
      });
    if (rule.mode === "observe") {
      services.log.info({ rule: rule.name, phase, action: summary, mode: "observe" }, "rule would act (observe mode)");
      record("continue");
      continue;
    }
    services.log.info({ rule: rule.name, phase, action: summary }, "rule matched");
    const by: DecidedBy = { source: "rule", name: rule.name };
    const scope: TemplateScope = {
      connection,
      facts: transaction?.facts ?? connection.facts,
      sender: transaction?.sender.address,
      recipient: input.recipient?.address,
      rule: rule.name,
    };
    let decision: Decision = CONTINUE;
    for (const action of rule.actions) {
      decision = act(action, by, scope, input, state, services);
    }
    record(decision.kind);
    if (decision.kind !== "continue" || state.done) return decision;
  }
  return CONTINUE;
}

/** Carries out one action; the deciding ones (always last in a rule) return their decision. */
function act(
  action: RuleAction,
  by: DecidedBy,
  scope: TemplateScope,
  input: PhaseInput,
  state: RuleState,
  services: Pick<Services, "log">,
): Decision {
  // Transaction actions run from MAIL on (compile.ts), so a transaction exists for them.
  const { transaction } = input;
  switch (action.type) {
    case "accept":
      state.done = true;
      return { kind: "accept", by };
    case "reject":
    case "defer":
    case "disconnect":
      return {
        kind: action.type,
        reply: renderReply(action.reply ?? GENERIC_REPLIES[action.type], scope, action.type),
        by,
        reason: `rule ${by.name}`,
      };
    case "score": {
      const holder: { score: number } = transaction ?? input.connection;
      holder.score += action.points;
      return CONTINUE;
    }
    case "skip":
      for (const plugin of action.plugins) state.skip.add(plugin);
      return CONTINUE;
    case "log":
      services.log.info(
        { rule: by.name, note: action.message ? renderTemplate(action.message, scope) : null },
        "rule log",
      );
      return CONTINUE;
    case "tag":
      transaction?.tags.add(action.tag);
      return CONTINUE;
    case "addHeader": {
      // Placeholders are filled in the value only: the name is the policy's, whatever a client sends.
      const colon = action.field.indexOf(":");
      transaction?.headers.prepend.push(
        action.field.slice(0, colon + 1) + renderTemplate(action.field.slice(colon + 1), scope),
      );
      return CONTINUE;
    }
    case "removeHeader": {
      const name = action.name.toLowerCase();
      transaction?.headers.remove.push((field) => field.toLowerCase() === name);
      return CONTINUE;
    }
    case "route":
      if (transaction) transaction.route = action.to;
      return CONTINUE;
    case "quarantine":
      if (transaction) {
        transaction.route = action.to;
        transaction.tags.add("quarantine");
      }
      state.done = true;
      return CONTINUE;
  }
}
