/** Builds PROXY v2 headers as a load balancer sends them (tests and the fuzzer speak as one). */
const SIGNATURE = Buffer.from("0d0a0d0a000d0a515549540a", "hex");

/** The 16 bytes of an IPv6 address written in full or with one `::`. */
function ipv6Bytes(address: string): Buffer {
  const [head, tail] = address.split("::").map((part) => (part === "" ? [] : part.split(":")));
  const groups = tail === undefined ? head : [...head, ...Array(8 - head.length - tail.length).fill("0"), ...tail];
  const bytes = Buffer.alloc(16);
  for (const [i, group] of groups.entries()) bytes.writeUInt16BE(Number.parseInt(group, 16), i * 2);
  return bytes;
}

/** A PROXY (command 1) header over TCP for `source` → `destination`; both of one family. */
export function proxyV2Header(
  source: { address: string; port: number },
  destination: { address: string; port: number },
) {
  const v6 = source.address.includes(":");
  const address = (text: string) => (v6 ? ipv6Bytes(text) : Buffer.from(text.split(".").map(Number)));
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(source.port, 0);
  ports.writeUInt16BE(destination.port, 2);
  return proxyV2Raw(
    0x21,
    v6 ? 0x21 : 0x11,
    Buffer.concat([address(source.address), address(destination.address), ports]),
  );
}

/** Any header: version/command byte, family/protocol byte and body as given. */
export function proxyV2Raw(versionCommand: number, family: number, body: Buffer): Buffer {
  const fixed = Buffer.from([versionCommand, family, 0, 0]);
  fixed.writeUInt16BE(body.length, 2);
  return Buffer.concat([SIGNATURE, fixed, body]);
}
