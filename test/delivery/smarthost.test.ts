/**
 * Smarthost routes through the wire: the gateway submits to an in-process provider that insists on
 * TLS and AUTH, with the password from a file or an environment variable. Wrong or missing
 * credentials leave the mail waiting (queue: deferred; proxy: 4xx), and nothing the gateway
 * prints — logs, `check`, `try` — ever holds the password.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parsePolicy } from "../../app/catalogue.js";
import { Router } from "../../core/delivery/routes.js";
import { PolicyError } from "../../core/policy/load.js";
import { cleanupAfterAll } from "../fixtures/cleanups.js";
import type { TestGateway } from "../fixtures/gateway.js";
import { type SubmissionServer, startSubmissionServer } from "../fixtures/submission-server.js";
import { message, send, until } from "../queue/helpers.js";

const USER = "relay-user@example.test";
const PASSWORD = "s3cret-Smarthost-Pa55";
const ENV = "PORTCULLIS_TEST_SMARTHOST_PASSWORD";

const cleanups = cleanupAfterAll();
after(() => {
  delete process.env[ENV];
});

async function provider(implicitTls = false): Promise<SubmissionServer> {
  const server = await startSubmissionServer({ user: USER, password: PASSWORD, implicitTls });
  cleanups.add(() => server.close());
  return server;
}

function gateway(policy: string, files: Record<string, string> = {}): Promise<TestGateway> {
  return cleanups.gateway(policy, { files });
}

/** The test certificate is self-signed, so the route checks TLS is on but not whose certificate it is. */
function policy(port: number, options: { mode: "queue" | "proxy"; tls?: string; auth: string }): string {
  return `
version: 1
server: { hostname: gw.test }
relay: { networks: [127.0.0.0/8], postmaster: "maildir:./postmaster" }
routes:
  - to: "smtp://127.0.0.1:${port}"
    tls: { mode: ${options.tls ?? "required"}, verify: false }
    auth: ${options.auth}
delivery:
  mode: ${options.mode}
  retry: { schedule: [100ms], maxAge: 1h }
`;
}

/** The password in every form it could leak in: as written, and inside an AUTH PLAIN or LOGIN exchange. */
function assertNoPassword(text: string, where: string): void {
  for (const form of [
    PASSWORD,
    Buffer.from(PASSWORD).toString("base64"),
    Buffer.from(`\0${USER}\0${PASSWORD}`).toString("base64"),
  ]) {
    assert.ok(!text.includes(form), `${where} holds the password`);
  }
}

describe("smarthost route", () => {
  it("submits with STARTTLS and AUTH (queue mode), the password read from a file", async () => {
    const upstream = await provider();
    const gw = await gateway(
      policy(upstream.port, { mode: "queue", auth: `{ user: "${USER}", passwordFile: secrets/smarthost }` }),
      { "secrets/smarthost": `${PASSWORD}\n` },
    );
    const reply = await send(gw.port, { from: "a@example.test", to: ["b@elsewhere.test"], data: message("s1") });
    assert.equal(reply.code, 250);
    const [received] = await upstream.waitForMessages(1);
    assert.equal(received.user, USER);
    assert.equal(received.secure, true);
    assert.deepEqual(received.to, ["b@elsewhere.test"]);
    assert.match(received.raw.toString(), /Message-ID: <s1@sender.test>/);
    assert.deepEqual(
      upstream.logins.map(({ user, ok, secure }) => ({ user, ok, secure })),
      [{ user: USER, ok: true, secure: true }],
    );
    assertNoPassword(JSON.stringify(gw.logs), "the log");
  });

  it("defers on wrong credentials, names the route in the log, and delivers once the file is fixed", async () => {
    const upstream = await provider();
    const gw = await gateway(
      policy(upstream.port, { mode: "queue", auth: `{ user: "${USER}", passwordFile: smarthost.pw }` }),
      { "smarthost.pw": "not-the-password\n" },
    );
    assert.equal((await send(gw.port, { to: ["b@elsewhere.test"], data: message("s2") })).code, 250);
    await until(() => gw.logs.some((line) => line.event === "deferred"), "a deferral");
    const attempt = gw.logs.find((line) => line.event === "delivery") as {
      recipients: Array<{ status: string; reply: string }>;
    };
    assert.equal(attempt.recipients[0].status, "deferred");
    assert.match(
      attempt.recipients[0].reply,
      new RegExp(`^451 4\\.7\\.0 Authentication as ${USER} at 127\\.0\\.0\\.1:${upstream.port} failed: .*535`),
    );
    assert.equal(upstream.messages.length, 0);
    assert.equal(upstream.logins[0].ok, false);

    // The password is read at each attempt: fixing the file needs no reload.
    await writeFile(join(gw.dir, "smarthost.pw"), PASSWORD);
    await upstream.waitForMessages(1);
    assertNoPassword(JSON.stringify(gw.logs), "the log");
  });

  it("defers, naming the file and not its content, when the password file is missing", async () => {
    const upstream = await provider();
    const gw = await gateway(
      policy(upstream.port, { mode: "proxy", auth: `{ user: "${USER}", passwordFile: missing.pw }` }),
    );
    const reply = await send(gw.port, { to: ["b@elsewhere.test"], data: message("s3") });
    assert.equal(reply.code, 451);
    assert.match(
      reply.text,
      new RegExp(
        `^4\\.7\\.0 Smarthost smtp://127\\.0\\.0\\.1:${upstream.port} as ${USER}: cannot read passwordFile .*missing\\.pw \\(ENOENT\\)$`,
      ),
    );
    assert.equal(upstream.logins.length, 0);
  });

  it("submits over implicit TLS (port 465 style) in proxy mode, the password from the environment", async () => {
    const upstream = await provider(true);
    process.env[ENV] = PASSWORD;
    const gw = await gateway(
      policy(upstream.port, { mode: "proxy", tls: "implicit", auth: `{ user: "${USER}", passwordEnv: ${ENV} }` }),
    );
    const reply = await send(gw.port, { to: ["b@elsewhere.test"], data: message("s4") });
    assert.equal(reply.code, 250);
    const [received] = await upstream.waitForMessages(1);
    assert.equal(received.secure, true);
    assert.equal(received.user, USER);
    assertNoPassword(JSON.stringify(gw.logs), "the log");
  });

  it("answers 4xx in proxy mode on wrong credentials, so the client keeps the message", async () => {
    const upstream = await provider(true);
    process.env[ENV] = "wrong";
    const gw = await gateway(
      policy(upstream.port, { mode: "proxy", tls: "implicit", auth: `{ user: "${USER}", passwordEnv: ${ENV} }` }),
    );
    const refused = await send(gw.port, { to: ["b@elsewhere.test"], data: message("s5") });
    assert.equal(refused.code, 451);
    assert.match(refused.text, new RegExp(`^4\\.7\\.0 Authentication as ${USER} at 127\\.0\\.0\\.1:${upstream.port}`));
    assert.equal(upstream.messages.length, 0);
    assert.ok(
      gw.transactions().some((line) => JSON.stringify(line).includes(`127.0.0.1:${upstream.port}`)),
      "the transaction log names the route",
    );
    assertNoPassword(JSON.stringify(gw.logs), "the log");
  });

  it("refuses policies that would send the password in clear text or to a non-smarthost", async () => {
    const problems = async (route: string) => {
      const text = `version: 1\nroutes:\n  - ${route}\n`;
      const error = await parsePolicy(text, "/tmp/p.yaml").then(
        () => assert.fail("the policy was accepted"),
        (e: unknown) => e,
      );
      assert.ok(error instanceof PolicyError);
      return error.problems.map((p) => `${p.path}: ${p.message}`);
    };
    const auth = 'auth: { user: u, passwordEnv: "PW" }';
    assert.deepEqual(await problems(`{ to: "smtp://192.0.2.1:587", tls: opportunistic, ${auth} }`), [
      'routes.0.tls: auth sends a password: tls must be "required" (STARTTLS, port 587) or "implicit" (port 465), not "opportunistic"',
    ]);
    assert.deepEqual(await problems(`{ to: mx, ${auth} }`), [
      'routes.0.to: auth is for smarthosts: every target must be smtp://HOST:PORT, e.g. "smtp://smtp.provider.example:587"',
    ]);
    assert.deepEqual(
      await problems('{ to: "smtp://192.0.2.1:587", auth: { user: u, passwordEnv: PW, passwordFile: f } }'),
      [
        "routes.0.auth: give exactly one of passwordFile or passwordEnv (where the password is, never the password itself)",
      ],
    );
    // Without `tls`, a smarthost route requires STARTTLS (it never falls back to clear text).
    const loaded = await parsePolicy(
      `version: 1\nroutes:\n  - { to: "smtp://192.0.2.1:587", ${auth} }\n`,
      "/tmp/p.yaml",
    );
    const route = new Router(loaded.config.routes).routeFor({ recipientDomain: "x.test", senderDomain: "y.test" });
    assert.deepEqual(route.tls, { mode: "required" });
  });

  it("check and try print where the password is, never the password", async () => {
    const root = fileURLToPath(new URL("../..", import.meta.url));
    const dir = await mkdtemp(join(tmpdir(), "portcullis-smarthost-"));
    cleanups.add(() => rm(dir, { recursive: true, force: true }));
    const file = join(dir, "policy.yaml");
    await writeFile(file, policy(2525, { mode: "proxy", auth: `{ user: "${USER}", passwordFile: smarthost.pw }` }));
    await writeFile(join(dir, "smarthost.pw"), PASSWORD);
    const run = (...args: string[]) =>
      spawnSync(process.execPath, [join(root, "bin/portcullis.js"), ...args], { cwd: root, encoding: "utf8" });
    const check = run("check", file);
    assert.equal(check.status, 0, check.stderr);
    const tried = run("try", "--policy", file, "--ip", "127.0.0.1", "--from", "a@example.test", "--to", "b@x.test");
    assert.equal(tried.status, 0, tried.stderr);
    assert.match(tried.stdout, /smtp:\/\/127\.0\.0\.1:2525/);
    for (const [name, out] of Object.entries({ check, try: tried })) {
      assertNoPassword(out.stdout + out.stderr, `${name} output`);
    }
  });
});
