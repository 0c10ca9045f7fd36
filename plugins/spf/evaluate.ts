/**
 * SPF evaluation with a replay memo. An SPF result is a function of the check's inputs and of the
 * DNS answers the evaluation saw, so each result is kept with the questions asked and the answers
 * given. The next check with the same inputs asks the same questions again (from the shared DNS
 * cache, so TTLs still decide freshness) and, when every answer is the same, takes the kept result
 * instead of evaluating again: mailauth's evaluation (domain validation, CIDR parsing, header
 * formatting) was 4 % of the gateway's CPU under the edge policy (issue 11), a cached lookup is
 * a few microseconds. Results that saw a DNS failure are never kept.
 */
import { LRUCache } from "lru-cache";
import type { DnsResolver } from "../../core/dns.js";
import { type SPFResult, spf } from "../../core/mailauth.js";

export interface SpfQuestion {
  readonly ip: string;
  readonly helo: string;
  /** undefined: the HELO identity (postmaster@helo). */
  readonly sender: string | undefined;
  readonly mta: string;
  readonly maxLookups: number;
  readonly maxVoidLookups: number;
}

interface Exchange {
  readonly name: string;
  readonly type: string;
  /** JSON of the answer, or `!CODE` for a "no such name / no data" answer. */
  readonly outcome: string;
}

interface Kept {
  readonly exchanges: readonly Exchange[];
  readonly result: SPFResult;
}

/** "No such name" and "no data" are answers; anything else (SERVFAIL, timeout) says nothing about the record. */
const ANSWER_CODES: ReadonlySet<string> = new Set(["ENOTFOUND", "ENODATA"]);

/** Distinct (client, sender, HELO) checks remembered. */
const KEPT_RESULTS = 10_000;

export interface SpfEvaluator {
  check(question: SpfQuestion, dns: DnsResolver): Promise<SPFResult>;
  /** Evaluations run by mailauth (not answered from the memo), for tests. */
  readonly evaluations: number;
}

export function spfEvaluator(): SpfEvaluator {
  const kept = new LRUCache<string, Kept>({ max: KEPT_RESULTS });
  let evaluations = 0;

  async function evaluate(question: SpfQuestion, dns: DnsResolver): Promise<SPFResult> {
    evaluations++;
    const exchanges: Exchange[] = [];
    let keep = true;
    const result = await spf({
      ip: question.ip,
      helo: question.helo,
      sender: question.sender,
      mta: question.mta,
      maxResolveCount: question.maxLookups,
      maxVoidCount: question.maxVoidLookups,
      resolver: async (name, type) => {
        const outcome = await ask(dns, name, type);
        exchanges.push({ name, type, outcome: outcome.text });
        if (outcome.error) {
          // mailauth learns of a void lookup from the error, so answers are thrown too.
          if (!outcome.isAnswer) keep = false;
          throw outcome.error;
        }
        return outcome.value as string[][];
      },
    });
    // %{t} expands to the time of the check: a record using it asks different questions every second.
    if (exchanges.some((exchange) => exchange.outcome.includes("%{t"))) keep = false;
    if (keep) kept.set(keyOf(question), { exchanges, result });
    return result;
  }

  return {
    async check(question, dns) {
      const previous = kept.get(keyOf(question));
      if (previous && (await sameAnswers(previous.exchanges, dns))) return previous.result;
      return evaluate(question, dns);
    },
    get evaluations() {
      return evaluations;
    },
  };
}

function keyOf(question: SpfQuestion): string {
  return JSON.stringify([
    question.ip,
    question.helo,
    question.sender ?? null,
    question.mta,
    question.maxLookups,
    question.maxVoidLookups,
  ]);
}

/** What one question got: records, or an error — which is an answer only for "no such name / no data". */
type Outcome =
  | { readonly text: string; readonly value: unknown; readonly error?: undefined }
  | { readonly text: string; readonly error: Error; readonly isAnswer: boolean };

async function ask(dns: DnsResolver, name: string, type: string): Promise<Outcome> {
  try {
    const value = await dns.resolve(name, type);
    return { text: JSON.stringify(value), value };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    return { text: `!${code}`, error: error as Error, isAnswer: ANSWER_CODES.has(code) };
  }
}

async function sameAnswers(exchanges: readonly Exchange[], dns: DnsResolver): Promise<boolean> {
  const now = await Promise.all(exchanges.map((exchange) => ask(dns, exchange.name, exchange.type)));
  return now.every((outcome, i) => outcome.text === exchanges[i].outcome);
}
