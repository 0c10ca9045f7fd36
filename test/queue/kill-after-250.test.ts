/**
 * A gateway killed (SIGKILL) right after a next hop said 250 must not deliver that message again
 * after its restart: the "delivered" mark has to reach the operating system before the gateway does
 * anything else, such as sending the next command on that connection.
 *
 * The next hop holds its reply to the end of DATA of message A while message B waits for the only
 * connection the route allows (`connections: 1`). Then it answers 250, and the moment B's MAIL FROM
 * arrives on that connection — the first thing the gateway does after taking the 250 — the test
 * kills the gateway. A restart on the same spool must recover only B, and the next hop must end up
 * with exactly one copy of each message. Each round is a fresh pair of messages and a fresh kill.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, it } from "node:test";
import { type GatewayProcess, startGatewayProcess } from "../fixtures/gateway-process.js";
import { type ReceivedMessage, startNextHop } from "../fixtures/next-hop.js";
import { message, send, until, writeQueuePolicy } from "./helpers.js";

/** Kills per run: each one lands in a different moment of the gateway's own bookkeeping. */
const ROUNDS = 3;

let dir = "";
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const messageIdOf = (m: ReceivedMessage) => /Message-ID: <([^@]+)@/.exec(m.raw.toString("latin1"))?.[1];

it("does not deliver again a message whose 250 arrived just before the gateway was killed", async (t) => {
  dir = await mkdtemp(join(tmpdir(), "portcullis-kill250-"));
  /** Set while message A's reply is held: resolving it lets the next hop answer 250. */
  let releaseHeld: (() => void) | null = null;
  /** The gateway to kill at the next MAIL FROM (armed when A's 250 goes out). */
  let killOnMail: GatewayProcess | null = null;
  let killed: Promise<void> | null = null;
  /** The message whose first copy gets its reply held (a copy delivered again is answered at once). */
  let toHold = "";
  const hop = await startNextHop({
    holdDataReply: (received) => {
      if (messageIdOf(received) !== toHold) return Promise.resolve();
      toHold = "";
      return new Promise<void>((resolve) => {
        releaseHeld = resolve;
      });
    },
    onMailFrom: () => {
      const gateway = killOnMail;
      if (!gateway) return;
      killOnMail = null;
      killed = gateway.kill();
    },
  });
  t.after(() => hop.close());
  const policy = await writeQueuePolicy(dir, { nextHopPort: hop.port, connections: 1, logLevel: "info" });
  const copies = (id: string) => hop.messages.filter((m) => messageIdOf(m) === id).length;

  for (let round = 0; round < ROUNDS; round++) {
    const [a, b] = [`a${round}`, `b${round}`];
    toHold = a;
    const gateway = await startGatewayProcess(policy);
    try {
      assert.equal((await send(gateway.port, { to: ["x@example.test"], data: message(a) })).code, 250);
      await until(() => releaseHeld !== null, `the next hop holding ${a}`);
      // B is queued behind A: the route's one connection is busy until A's reply.
      assert.equal((await send(gateway.port, { to: ["x@example.test"], data: message(b) })).code, 250);
      killOnMail = gateway;
      const release = releaseHeld!;
      releaseHeld = null;
      release();
      await until(() => killed !== null, `B's MAIL FROM after ${a}'s 250`);
      await killed;
      killed = null;
    } finally {
      await gateway.kill();
    }

    const restarted = await startGatewayProcess(policy);
    try {
      await until(() => copies(b) === 1, `${b} delivered after the restart`);
    } finally {
      await restarted.stop();
    }
    const recovered = restarted.logs.find((line) => line.msg === "spool recovered")?.messages;
    t.diagnostic(`round ${round}: recovered ${recovered} message(s); ${a} delivered ${copies(a)} time(s)`);
    assert.equal(copies(a), 1, `${a} was delivered again after the kill that followed its 250 (round ${round})`);
    assert.equal(recovered, 1, `only ${b} is still queued after the kill (round ${round})`);
    assert.equal(copies(b), 1);
  }
});
