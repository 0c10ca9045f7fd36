/**
 * "250 only once the message is on disk", seen from outside the process. A SIGKILL test cannot see
 * a missing fsync (the page cache outlives the process), and the spool's own counters only say that
 * it believes it synced. Here the real CLI runs under strace, and the trace of its system calls must
 * show, before each `250 … queued as ID` is written to the client's socket:
 *   - the write of the record holding ID to a spool segment, then an fdatasync of that segment;
 *   - an fsync of the queue directory after that segment was created;
 *   - for a body kept in its own file: an fsync of that file before it is renamed into `large/`,
 *     then an fsync of `large/` after the rename.
 * strace prints a call's return only after the call ended, and a thread that made the call cannot go
 * on (and so cannot hand the result to the main thread) before strace printed it; so the order of
 * lines in the trace is the order in which the calls completed.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";
import { closedPort } from "../fixtures/next-hop.js";
import { message, send, writeQueuePolicy } from "./helpers.js";

const bin = fileURLToPath(new URL("../../bin/portcullis.js", import.meta.url));

/** One completed system call of the trace; `line` is where its result was printed. */
interface Call {
  readonly name: string;
  readonly args: string;
  readonly result: string;
  readonly line: number;
}

/**
 * Reads `strace -f -yy` output: a call interrupted by another thread's line is printed as
 * `name(args <unfinished ...>` and later `<... name resumed>rest) = result`, joined here.
 */
function parseTrace(text: string): Call[] {
  const calls: Call[] = [];
  const started = new Map<string, { name: string; args: string }>();
  text.split("\n").forEach((raw, line) => {
    const match = /^(\d+)\s+\S+\s+(.*)$/.exec(raw);
    if (!match) return;
    const [, pid, rest] = match;
    const unfinished = /^(\w+)\((.*) <unfinished \.\.\.>$/.exec(rest);
    if (unfinished) {
      started.set(pid, { name: unfinished[1], args: unfinished[2] });
      return;
    }
    const resumed = /^<\.\.\. (\w+) resumed>(.*)\)\s+= (.+)$/.exec(rest);
    if (resumed) {
      const start = started.get(pid);
      started.delete(pid);
      if (start) calls.push({ name: start.name, args: start.args + resumed[2], result: resumed[3], line });
      return;
    }
    const whole = /^(\w+)\((.*)\)\s+= (.+)$/.exec(rest);
    if (whole) calls.push({ name: whole[1], args: whole[2], result: whole[3], line });
  });
  return calls;
}

/** The path strace's `-yy` printed for the call's first argument (`21</spool/queue/1.seg>`). */
function fdPath(call: Call): string | undefined {
  return /^\d+<([^>]*)>/.exec(call.args)?.[1];
}

const succeeded = (call: Call) => !call.result.startsWith("-1");

let dir = "";
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "portcullis-fsync-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

it("writes 250 only after the message's segment (and any new directory entry) is synced", async (t) => {
  const spool = join(dir, "spool");
  const queueDir = join(spool, "queue");
  const largeDir = join(spool, "large");
  // Nothing listens at the next hop: the messages stay queued and the trace holds only their storing.
  const policyFile = await writeQueuePolicy(dir, {
    nextHopPort: await closedPort(),
    retry: { schedule: ["1h"], maxAge: "1d" },
    logLevel: "silent",
  });
  const traceFile = join(dir, "trace.txt");
  const strace = spawn(
    "strace",
    [
      ...["-f", "-tt", "-yy", "-qq", "-s", "8192", "-o", traceFile],
      ...["-e", "signal=none"],
      ...[
        "-e",
        "trace=write,writev,sendmsg,sendto,pwrite64,pwritev,pwritev2,fsync,fdatasync,openat,rename,renameat,renameat2",
      ],
      ...[process.execPath, bin, "start", "--policy", policyFile, "--listen", "127.0.0.1:0"],
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const exited = once(strace, "exit");
  // strace's only child is the gateway; stopping it ends strace too, also when an assertion failed.
  let gatewayPid = 0;
  t.after(async () => {
    if (strace.exitCode !== null) return;
    if (gatewayPid) process.kill(gatewayPid, "SIGKILL");
    else strace.kill("SIGKILL");
    await exited;
  });
  let stderr = "";
  strace.stderr!.setEncoding("utf8");
  const port = await new Promise<number>((resolve, reject) => {
    strace.stderr!.on("data", (chunk: string) => {
      stderr += chunk;
      const listening = /listening on 127\.0\.0\.1:(\d+)/.exec(stderr);
      if (!listening) return;
      gatewayPid = Number(readFileSync(`/proc/${strace.pid}/task/${strace.pid}/children`, "utf8").trim());
      resolve(Number(listening[1]));
    });
    exited.then(([code]) => reject(new Error(`gateway under strace exited (${code}): ${stderr}`)));
  });

  const queuedIds: string[] = [];
  const store = async (name: string, body?: string) => {
    const reply = await send(port, { to: ["b@example.test"], data: message(name, body) });
    assert.equal(reply.code, 250, reply.text);
    const id = /queued as (\w+)/.exec(reply.text)![1];
    queuedIds.push(id);
    return id;
  };
  await store("first"); // creates the first segment
  await store("second"); // appends to it
  await Promise.all(["third", "fourth", "fifth"].map((name) => store(name))); // share group commits
  // Past the gateway's in-memory limit: the body is received into its own file and renamed into large/.
  const largeId = await store("large", `${"x".repeat(900)}\r\n`.repeat(300));

  process.kill(gatewayPid, "SIGTERM");
  await exited;

  const calls = parseTrace(await readFile(traceFile, "utf8"));
  const lastBefore = (limit: number, test: (call: Call) => boolean) =>
    calls.findLast((call) => call.line < limit && succeeded(call) && test(call));

  for (const id of queuedIds) {
    const reply = calls.find(
      (call) =>
        ["write", "writev", "sendmsg", "sendto"].includes(call.name) &&
        fdPath(call)?.startsWith("TCP:") &&
        call.args.includes(`250 2.0.0 Ok: queued as ${id}`),
    );
    assert.ok(reply, `the trace shows the 250 for ${id} written to the client`);
    const record = calls.find(
      (call) => call.name.startsWith("pwrite") && fdPath(call)?.endsWith(".seg") && call.args.includes(id),
    );
    assert.ok(record && record.line < reply.line, `the record of ${id} was written to a segment before its 250`);
    const segment = fdPath(record)!;
    const dataSync = lastBefore(
      reply.line,
      (call) => (call.name === "fdatasync" || call.name === "fsync") && fdPath(call) === segment,
    );
    assert.ok(
      dataSync && dataSync.line > record.line,
      `${segment} was synced after the record of ${id} was written and before its 250`,
    );
    // The segment's directory entry must be durable before any 250 for a record in it.
    const created = calls.find(
      (call) => call.name === "openat" && call.args.includes(`"${segment}"`) && call.args.includes("O_CREAT"),
    );
    assert.ok(created, `the trace shows ${segment} being created`);
    const dirSync = lastBefore(reply.line, (call) => call.name === "fsync" && fdPath(call) === queueDir);
    assert.ok(
      dirSync && dirSync.line > created.line,
      `the queue directory was synced after ${segment} was created and before the 250 for ${id}`,
    );
  }

  const largeReply = calls.find((call) => call.args.includes(`250 2.0.0 Ok: queued as ${largeId}`))!;
  const largeBody = join(largeDir, largeId);
  const renamed = calls.find((call) => call.name.startsWith("rename") && call.args.includes(`"${largeBody}"`));
  assert.ok(renamed && renamed.line < largeReply.line, "the large body was renamed into large/ before its 250");
  const source = /"([^"]+\.eml)"/.exec(renamed.args)![1];
  const bodySync = lastBefore(renamed.line, (call) => call.name === "fsync" && fdPath(call) === source);
  assert.ok(bodySync, "the large body's file was fsynced before it was renamed");
  const largeDirSync = lastBefore(largeReply.line, (call) => call.name === "fsync" && fdPath(call) === largeDir);
  assert.ok(largeDirSync && largeDirSync.line > renamed.line, "large/ was synced after the rename and before the 250");
});
