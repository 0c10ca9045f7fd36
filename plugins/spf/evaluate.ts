/**
 * SPF evaluation through the replay memo (../sender-auth/replay.ts): a check with the same inputs
 * whose DNS answers are all unchanged takes the kept result.
 */
import { type DnsResolver, type SPFResult, spf } from "../../core/index.js";
import { replayMemo } from "../shared/sender-auth/replay.js";

export interface SpfQuestion {
  readonly ip: string;
  readonly helo: string;
  /** undefined: the HELO identity (postmaster@helo). */
  readonly sender: string | undefined;
  readonly mta: string;
  readonly maxLookups: number;
  readonly maxVoidLookups: number;
}

/** Distinct (client, sender, HELO) checks remembered. */
const KEPT_RESULTS = 10_000;

export interface SpfEvaluator {
  check(question: SpfQuestion, dns: DnsResolver): Promise<SPFResult>;
  /** Evaluations run by mailauth (not answered from the memo), for tests. */
  readonly evaluations: number;
}

export function spfEvaluator(): SpfEvaluator {
  const memo = replayMemo<SPFResult>(KEPT_RESULTS);
  return {
    check(question, dns) {
      const key = JSON.stringify([
        question.ip,
        question.helo,
        question.sender ?? null,
        question.mta,
        question.maxLookups,
        question.maxVoidLookups,
      ]);
      return memo.run(
        key,
        dns,
        (resolver) =>
          spf({
            ip: question.ip,
            helo: question.helo,
            sender: question.sender,
            mta: question.mta,
            maxResolveCount: question.maxLookups,
            maxVoidCount: question.maxVoidLookups,
            resolver,
          }),
        // %{t} expands to the time of the check: a record using it asks different questions every second.
        (exchanges) => !exchanges.some((exchange) => exchange.outcome.includes("%{t")),
      );
    },
    get evaluations() {
      return memo.evaluations;
    },
  };
}
