/**
 * `portcullis passwd [NAME]`: reads a password from stdin (one line, so `echo … |` and a typed line
 * both work) and prints the hash for a users file, or the whole `NAME:hash` line when a name is
 * given. The password never appears in argv, where `ps` would show it.
 */
import type { Readable, Writable } from "node:stream";
import { hashPassword } from "../core/smtp/auth/users.js";

export async function passwdCommand(args: string[], stdin: Readable, stdout: Writable): Promise<number> {
  if (args.length > 1 || args.some((arg) => arg.startsWith("-") || arg.includes(":"))) {
    throw new Error("passwd takes at most a user name (without ':'); the password is read from stdin");
  }
  let input = "";
  for await (const chunk of stdin) {
    input += String(chunk);
    if (input.includes("\n")) break;
  }
  const password = input.split(/\r?\n/)[0];
  if (password === "") throw new Error("passwd: no password on stdin");
  const hash = await hashPassword(password);
  stdout.write(args.length === 1 ? `${args[0]}:${hash}\n` : `${hash}\n`);
  return 0;
}
