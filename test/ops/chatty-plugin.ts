/**
 * A test plugin that logs through the logger its setup gets: a debug and a warn line at setup and
 * in each of its hooks, tagged with its `id`, so tests can see which levels reach the log.
 */
import { definePlugin, z } from "../../core/index.js";

export default definePlugin({
  name: "chatty",
  options: z.strictObject({ id: z.string() }),
  setup(options, services) {
    const log = services.log;
    log.debug({ chatty: options.id }, "chatty debug: setup");
    log.warn({ chatty: options.id }, "chatty warn: setup");
    const hook = (phase: string) => async () => {
      log.debug({ chatty: options.id, phase }, "chatty debug");
      log.warn({ chatty: options.id, phase }, "chatty warn");
      return undefined;
    };
    return { mail: hook("mail"), data: hook("data") };
  },
});
