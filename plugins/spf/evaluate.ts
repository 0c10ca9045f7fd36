/**
 * SPF evaluation (core's checkSpf) through the replay memo (../sender-auth/replay.ts): a check with the same inputs
 * whose DNS answers are all unchanged takes the kept result.
 */
import { checkSpf, type DnsResolver, type SpfCheckResult } from "../../core/index.js";
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
  check(question: SpfQuestion, dns: DnsResolver): Promise<SpfCheckResult>;
  /** Evaluations run by mailauth (not answered from the memo), for tests. */
  readonly evaluations: number;
}

export function spfEvaluator(): SpfEvaluator {
  const memo = replayMemo<SpfCheckResult>(KEPT_RESULTS);
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
      return memo.run(key, dns, (resolver) =>
        checkSpf({
          ip: question.ip,
          helo: question.helo,
          sender: question.sender,
          mta: question.mta,
          maxLookups: question.maxLookups,
          maxVoidLookups: question.maxVoidLookups,
          resolver,
        }),
      );
    },
    get evaluations() {
      return memo.evaluations;
    },
  };
}
