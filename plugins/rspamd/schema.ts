import { Size, z } from "../../core/index.js";

/** RFC 5322 §3.6.8: printable ASCII but the colon. */
export const FIELD_NAME = /^[!-9;-~]+$/;

export const RspamdOptions = z.strictObject({
  url: z
    .url({ protocol: /^https?$/, error: 'expected an http(s) URL such as "http://127.0.0.1:11333"' })
    .default("http://127.0.0.1:11333")
    .transform((url) => new URL("checkv2", url.endsWith("/") ? url : `${url}/`))
    .describe(
      'where Rspamd listens: its normal worker ("http://127.0.0.1:11333"), or the controller (port 11334, with ' +
        "password) or a proxy worker; the plugin posts to /checkv2 under it",
    ),
  password: z
    .string()
    .min(1)
    .optional()
    .describe("sent as the Password header: the controller worker asks for it from clients outside its secure_ip"),
  maxSize: Size.prefault("20MB").describe(
    'messages larger than this are delivered unscanned, with the finding rspamd.skipped: too-large, e.g. "20MB"',
  ),
  spamHeader: z
    .string()
    .regex(FIELD_NAME, "a header field name: printable ASCII, no colon or space")
    .nullable()
    .default("X-Spam")
    .describe(
      "field set to Yes on a message Rspamd calls spam (add header, rewrite subject, reject) that the policy " +
        "lets through; null adds none (Rspamd's milter_headers fields are added either way)",
    ),
  maxConnections: z
    .number()
    .int()
    .positive()
    .default(32)
    .describe(
      "scans in flight at once (more wait for a connection); connections are kept open for reuse where the " +
        "server allows it (a proxy in front of Rspamd; Rspamd's own workers close after each reply)",
    ),
});

export type RspamdOptions = z.output<typeof RspamdOptions>;
