/**
 * Listening for the HTTP servers of the observability room (the operations endpoint, the dashboard).
 */
import { once } from "node:events";
import type { Server } from "node:http";
import type { HostPort } from "../toolkit/netaddr.js";

/**
 * Starts `server` listening on `address`; resolves with the address it got (the port the OS picked
 * when asked for port 0), or rejects with the reason it cannot listen (e.g. the port is taken).
 */
export async function listenOn(server: Server, address: HostPort): Promise<HostPort> {
  server.listen(address.port, address.host);
  await Promise.race([
    once(server, "listening"),
    once(server, "error").then(([error]) => {
      throw error;
    }),
  ]);
  const bound = server.address();
  return typeof bound === "object" && bound ? { host: address.host, port: bound.port } : address;
}
