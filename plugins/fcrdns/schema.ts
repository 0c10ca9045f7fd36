import { z } from "zod";

export const FcrdnsOptions = z.strictObject({
  maxNames: z
    .int()
    .min(1)
    .max(20)
    .default(10)
    .describe("PTR names that are forward-checked, at most; a client publishing more has only the first ones checked"),
});

export type FcrdnsOptions = z.output<typeof FcrdnsOptions>;
