/**
 * A replay memo for DNS-driven evaluations (SPF, DMARC). Such a result is a function of the
 * evaluation's inputs and of the DNS answers it saw, so each result is kept with the questions
 * asked and the answers given. The next evaluation with the same inputs asks the same questions
 * again (from the shared DNS cache, so TTLs still decide freshness) and, when every answer is the
 * same, takes the kept result instead of evaluating again: mailauth's SPF and DMARC evaluations
 * (domain validation, CIDR and public-suffix parsing, header formatting) were 4–5 % of the
 * gateway's CPU under the edge policy; a cached lookup costs microseconds. A result that
 * saw a DNS failure (anything but "no such name" / "no data") is never kept.
 */
import { LRUCache } from "lru-cache";
import { type DnsResolver, isNegativeAnswer, type MailauthResolver } from "../../../core/index.js";

export interface Exchange {
  readonly name: string;
  readonly type: string;
  /** JSON of the answer, or `!CODE` for an error. */
  readonly outcome: string;
}

interface Kept<R> {
  readonly exchanges: readonly Exchange[];
  readonly result: R;
}

export interface ReplayMemo<R> {
  /**
   * The result for `key`: kept, when the questions behind it get the same answers, else from
   * `evaluate` (given a resolver that records).
   */
  run(key: string, dns: DnsResolver, evaluate: (resolver: MailauthResolver) => Promise<R>): Promise<R>;
  /** Evaluations run (not answered from the memo), for tests. */
  readonly evaluations: number;
}

export function replayMemo<R>(maxKept: number): ReplayMemo<R> {
  // A size of one per result rather than `max`, which would allocate every slot before the first message.
  const kept = new LRUCache<string, Kept<R>>({ maxSize: maxKept, sizeCalculation: () => 1 });
  let evaluations = 0;
  return {
    async run(key, dns, evaluate) {
      const previous = kept.get(key);
      if (previous && (await sameAnswers(previous.exchanges, dns))) return previous.result;
      evaluations++;
      const exchanges: Exchange[] = [];
      let failed = false;
      const result = await evaluate(async (name, type) => {
        const outcome = await ask(dns, name, type);
        exchanges.push({ name, type, outcome: outcome.text });
        if (outcome.error) {
          // mailauth learns of a void lookup from the error, so answers are thrown too.
          if (!outcome.isAnswer) failed = true;
          throw outcome.error;
        }
        return outcome.value as string[][];
      });
      if (!failed) kept.set(key, { exchanges, result });
      return result;
    },
    get evaluations() {
      return evaluations;
    },
  };
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
    return { text: `!${code}`, error: error as Error, isAnswer: isNegativeAnswer(code) };
  }
}

async function sameAnswers(exchanges: readonly Exchange[], dns: DnsResolver): Promise<boolean> {
  const now = await Promise.all(exchanges.map((exchange) => ask(dns, exchange.name, exchange.type)));
  return now.every((outcome, i) => outcome.text === exchanges[i].outcome);
}
