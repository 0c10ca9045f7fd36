/**
 * clamav through the wire, against a real clamd started for this file with a database of one
 * signature (EICAR): an infected attachment is refused naming the signature, over TCP and over the
 * unix socket; a clean one passes; a message over streamMaxLength is delivered unscanned with a
 * finding saying so; clamd's own error defers; clamd stopped yields onError and a log line naming
 * the scanner, and scanning resumes when it is back; a 20 MB message streams through a gateway
 * process whose memory grows by a few pieces, not by the message.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { parseClamdReply } from "../../plugins/clamav/clamd.js";
import type { ClamavFacts } from "../../plugins/clamav/index.js";
import { DaemonAddressOption, PIECE_BYTES } from "../../plugins/shared/scanner-daemon.js";
import { EICAR, EICAR_SIGNATURE, startClamd, type TestClamd } from "../fixtures/clamd.js";
import { cleanupAfterAll } from "../fixtures/cleanups.js";
import { startGatewayProcess } from "../fixtures/gateway-process.js";
import { largeMessage } from "../fixtures/large-message.js";
import { closedPort, type NextHop } from "../fixtures/next-hop.js";
import { dotStuff, SmtpTestClient } from "../fixtures/smtp-client.js";
import { lastFinding } from "./connection-checks.js";
import { attachmentMessage, scanPolicy, send, textMessage } from "./content-scan.js";

const MB = 1024 * 1024;
/** clamd's own limit here: above the 20 MB message, below the gateway's 25 MB. */
const CLAMD_STREAM_MAX = 24 * MB;
const SIGNATURE = `${EICAR_SIGNATURE}.UNOFFICIAL`;

const cleanups = cleanupAfterAll();

describe("clamav", () => {
  let clamd: TestClamd;
  let hop: NextHop;

  before(async () => {
    clamd = await startClamd({ streamMaxLength: CLAMD_STREAM_MAX });
    cleanups.add(() => clamd.close());
    hop = await cleanups.hop();
  });

  const gateway = (options: string) =>
    cleanups.gateway(scanPolicy(hop.port, `  - plugin: clamav\n    timeout: 60s\n${options}`));

  test("an EICAR attachment is refused with 554 5.7.1 naming the signature; a clean one passes", async () => {
    const gw = await gateway(`    address: "${clamd.address}"\n`);
    const infected = await send(gw.port, attachmentMessage("eicar.com", EICAR));
    assert.equal(infected.code, 554);
    assert.match(infected.raw, /^554 5\.7\.1 /);
    assert.ok(infected.text.includes(SIGNATURE), infected.raw);
    assert.deepEqual(lastFinding<ClamavFacts>(gw, "clamav"), {
      status: "infected",
      signatures: [SIGNATURE],
      signature: SIGNATURE,
      reason: null,
    });

    const delivered = hop.messages.length;
    const clean = await send(gw.port, attachmentMessage("report.txt", "Quarterly numbers, nothing else.\n"));
    assert.equal(clean.code, 250, clean.raw);
    assert.equal(lastFinding<ClamavFacts>(gw, "clamav").status, "clean");
    const [received] = (await hop.waitForMessages(delivered + 1)).slice(delivered);
    assert.ok(received.raw.includes('filename="report.txt"'));
  });

  test("clamd's unix socket serves as well as TCP", async () => {
    const gw = await gateway(`    address: "${clamd.socket}"\n`);
    const infected = await send(gw.port, attachmentMessage("eicar.com", EICAR));
    assert.equal(infected.code, 554, infected.raw);
    assert.ok(infected.text.includes(SIGNATURE), infected.raw);
  });

  test("a message over streamMaxLength is delivered unscanned, with a finding saying so", async () => {
    const gw = await gateway(`    address: "${clamd.address}"\n    streamMaxLength: 2KB\n`);
    const data = attachmentMessage("eicar.com", `${EICAR}\n${"padding line\n".repeat(300)}`);
    const delivered = hop.messages.length;
    const reply = await send(gw.port, data);
    assert.equal(reply.code, 250, reply.raw);
    const finding = lastFinding<ClamavFacts>(gw, "clamav");
    assert.equal(finding.status, "skipped");
    assert.match(finding.reason ?? "", /^\d+ bytes, larger than streamMaxLength 2000$/);
    await hop.waitForMessages(delivered + 1);
  });

  test("clamd refusing a stream past its own StreamMaxLength defers with 451 4.7.1 and a log line", async () => {
    const small = await startClamd({ streamMaxLength: 64 * 1024 });
    cleanups.add(() => small.close());
    const gw = await gateway(`    address: "${small.address}"\n    streamMaxLength: 1MB\n`);
    const reply = await send(gw.port, attachmentMessage("big.bin", Buffer.alloc(200 * 1024, 7)));
    assert.equal(reply.code, 451, reply.raw);
    assert.match(reply.raw, /^451 4\.7\.1 /);
    const finding = lastFinding<ClamavFacts>(gw, "clamav");
    assert.equal(finding.status, "error");
    // clamd's answer, or the connection it closed when its answer was lost to the reset.
    const refusal = /INSTREAM size limit exceeded|closed the connection after \d+ bytes/;
    assert.match(finding.reason ?? "", refusal);
    assert.ok(
      gw.logs.some((line) => line.plugin === "clamav" && line.level === 40 && refusal.test(String(line.err))),
      "a warning names clamav and says what clamd did",
    );
  });

  test("clamd stopped: the entry's onError (default 451) and a log line naming clamav; restarted: scanning resumes", async () => {
    const gw = await gateway(`    address: "${clamd.address}"\n`);
    await clamd.stop();
    try {
      const down = await send(gw.port, attachmentMessage("eicar.com", EICAR));
      assert.equal(down.code, 451, down.raw);
      assert.match(down.raw, /^451 4\.3\.0 /);
      const failure = gw.logs.find((line) => line.plugin === "clamav" && line.msg === "hook failed; applying onError");
      assert.ok(failure, "the core logs the failed hook under the plugin's name");
      assert.match(String(failure.err), new RegExp(`^clamd at ${clamd.address.replace(/\./g, "\\.")}: .*ECONNREFUSED`));
      assert.equal(lastFinding<ClamavFacts>(gw, "clamav").status, "error");
    } finally {
      await clamd.start();
    }
    const back = await send(gw.port, attachmentMessage("eicar.com", EICAR));
    assert.equal(back.code, 554, back.raw);
    assert.ok(back.text.includes(SIGNATURE), back.raw);
  });

  test("a 20 MB message streams to clamd while the gateway's memory grows by a few pieces", async () => {
    const dir = await mkdtemp(join(tmpdir(), "portcullis-clamav-rss-"));
    cleanups.add(() => rm(dir, { recursive: true, force: true }));
    const message = largeMessage(20 * MB);
    // Delivery goes nowhere (a closed port), so it reads nothing of the message while the measure runs.
    const nowhere = await closedPort();
    const policy = (entry: string) =>
      `${scanPolicy(nowhere, entry)}delivery: { mode: queue, spool: ${join(dir, "spool")} }\n`;
    // The resident size of a gateway process is made to follow what is live: a scavenge every 10 ms
    // frees the pieces already sent (Node leaves up to 64 MB of dead buffers for later), and blocks
    // of 64 KiB and more get their own mappings, given back to the system when freed.
    const scavenger = join(dir, "scavenge.mjs");
    await writeFile(scavenger, 'setInterval(() => gc({ type: "minor" }), 10).unref();\n');
    const liveMemoryOnly = {
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --expose-gc --max-semi-space-size=1 --import ${scavenger}`,
      MALLOC_MMAP_THRESHOLD_: String(64 * 1024),
    };
    /** Peak resident memory added while one message goes through a fresh gateway process with `entry`. */
    const growth = async (name: string, entry: string) => {
      const file = join(dir, `${name}.yaml`);
      await writeFile(file, policy(entry));
      const gw = await startGatewayProcess(file, { env: liveMemoryOnly });
      try {
        // A first small message warms every path up (the scan too), so the measure is of the large one alone.
        const warm = await send(gw.port, textMessage("warm-up", "Hello\r\n"));
        assert.equal(warm.code, 250, warm.raw);
        const client = await SmtpTestClient.connect(gw.port);
        try {
          for (const line of ["EHLO client.test", "MAIL FROM:<sender@sender.test>", "RCPT TO:<rcpt@example.test>"]) {
            assert.equal((await client.command(line)).code, 250);
          }
          assert.equal((await client.command("DATA")).code, 354);
          // The whole message but its final dot: once the gateway has taken it in, what follows
          // the dot (the data hooks: the scan) is what the measure covers.
          if (!client.socket.write(dotStuff(message))) await once(client.socket, "drain");
          await settled(gw.pid);
          await writeFile(`/proc/${gw.pid}/clear_refs`, "5"); // resets the peak (VmHWM) to the current RSS
          const before = await memory(gw.pid);
          client.write(".\r\n");
          const reply = await client.reply();
          const after = await memory(gw.pid);
          assert.equal(reply.code, 250, reply.raw);
          return { rss: before.rss, peak: after.peak - before.rss };
        } finally {
          await client.quit().catch(() => client.destroy());
        }
      } finally {
        await gw.stop();
      }
    };
    const entry = `  - plugin: clamav\n    timeout: 60s\n    address: "${clamd.address}"\n`;
    const scanned = await growth("scanned", entry);
    const baseline = await growth("baseline", "  []\n");
    const kib = (bytes: number) => `${Math.round(bytes / 1024)} KiB`;
    console.log(
      `20 MB message, gateway process peak RSS growth: ${kib(scanned.peak)} with clamav, ` +
        `${kib(baseline.peak)} without (scan pieces of ${kib(PIECE_BYTES)}; RSS before: ${kib(scanned.rss)})`,
    );
    // Streamed, the scan adds 2-4 MiB here (pieces in flight, and the collector's own pages);
    // held whole, the message adds its 20 MB.
    assert.ok(
      scanned.peak - baseline.peak < 96 * PIECE_BYTES,
      `scanning added ${kib(scanned.peak - baseline.peak)} of peak memory: the message was held, not streamed`,
    );
  });
});

/** Waits until the process has used no CPU for a while: it has read and stored all it was sent. */
async function settled(pid: number): Promise<void> {
  const cpu = async () => {
    const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1].split(" ");
    return Number(fields[11]) + Number(fields[12]); // utime + stime, in clock ticks
  };
  let last = await cpu();
  for (let still = 0; still < 5; ) {
    await sleep(20);
    const now = await cpu();
    still = now === last ? still + 1 : 0;
    last = now;
  }
}

async function memory(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1]) * 1024;
  return { rss: kib("VmRSS"), peak: kib("VmHWM") };
}

describe("daemon addresses", () => {
  test("HOST:PORT, [IPv6]:PORT and a unix socket's absolute path; anything else is refused", () => {
    const parse = (text: string) => DaemonAddressOption.safeParse(text);
    assert.deepEqual(parse("127.0.0.1:3310").data, { host: "127.0.0.1", port: 3310 });
    assert.deepEqual(parse("[::1]:3310").data, { host: "::1", port: 3310 });
    assert.deepEqual(parse("clamd.internal:3310").data, { host: "clamd.internal", port: 3310 });
    assert.deepEqual(parse("/run/clamav/clamd.ctl").data, { path: "/run/clamav/clamd.ctl" });
    for (const wrong of ["localhost", "127.0.0.1:0", "127.0.0.1:65536", "::1:3310", "run/clamd.ctl", ""]) {
      assert.equal(parse(wrong).success, false, wrong);
    }
  });
});

describe("clamd replies", () => {
  test("each form of reply, and signature names made one safe line", () => {
    const reply = (text: string) => parseClamdReply(Buffer.from(text));
    assert.deepEqual(reply("stream: OK\0"), { status: "clean" });
    assert.deepEqual(reply("stream: Eicar-Test-Signature FOUND\0"), {
      status: "infected",
      signatures: ["Eicar-Test-Signature"],
    });
    assert.deepEqual(reply("stream: A FOUND\nstream: B FOUND\0"), { status: "infected", signatures: ["A", "B"] });
    assert.deepEqual(reply("stream: Evil\u2028Name\u0085X FOUND\0"), {
      status: "infected",
      signatures: ["Evil Name X"],
    });
    assert.deepEqual(reply("INSTREAM size limit exceeded. ERROR\0"), {
      status: "error",
      reason: "INSTREAM size limit exceeded.",
    });
    assert.ok(reply("") instanceof Error);
    assert.ok(reply("220 mail.example.test ESMTP\r\n") instanceof Error);
  });
});
