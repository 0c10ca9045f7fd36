/** Option schemas shared by the built-in plugins. */
import { z } from "zod";
import { entryProblem } from "../../core/index.js";

/** An IP address or CIDR network, checked as `core/policy/lists.ts` checks a network list entry. */
export const NetworkEntry = z.string().superRefine((text, ctx) => {
  const problem = entryProblem("network", text);
  if (problem) ctx.addIssue({ code: "custom", message: problem });
});
