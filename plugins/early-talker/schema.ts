import { z } from "zod";
import { Duration } from "../../core/index.js";
import { NetworkEntry } from "../shared/options.js";

export const EarlyTalkerOptions = z.strictObject({
  delay: Duration.prefault("3s").describe(
    'how long the banner waits for a client that is neither allowlisted nor recently passed, e.g. "3s" (postscreen waits 6s)',
  ),
  allow: z.array(NetworkEntry).default([]).describe("client networks that are never delayed nor judged"),
  passTtl: Duration.prefault("1d").describe(
    "how long a client that waited politely for the banner is not delayed again",
  ),
});

export type EarlyTalkerOptions = z.output<typeof EarlyTalkerOptions>;
