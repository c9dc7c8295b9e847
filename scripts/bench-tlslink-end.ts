// One end of a scripts/bench-tlslink transfer, run inside a lab namespace with the TLS link code of
// the checkout given (its dist/ and build/): `server CHECKOUT ADDR MIB PKI_JSON` receives MIB MiB
// and closes; `client ...` sends mux-like frames (a 12-byte header and a 64 KiB payload, through
// queueFrame as the mux writes) until the server closes. Each prints "ready" (server, listening) and
// then the CPU seconds it used from the end of the handshake to the end of the transfer.
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as net from 'node:net';
import * as path from 'node:path';
import type * as TlsLinkModule from '../src/sys/tlslink';

const [role, checkout, addr, mib, pkiJson] = process.argv.slice(2);
const PORT = 9555;
const total = Number(mib) * 1024 * 1024;
const pki = JSON.parse(pkiJson!) as { ca: string; cert: string; key: string };
const { TlsLinkContext, TlsLinkSocket } = createRequire(__filename)(
  path.join(checkout!, 'dist', 'src', 'sys', 'tlslink.js'),
) as typeof TlsLinkModule;
const ctx = new TlsLinkContext({
  server: role === 'server',
  ca: fs.readFileSync(pki.ca),
  cert: fs.readFileSync(pki.cert),
  key: fs.readFileSync(pki.key),
  alpn: 'ipdeadgate/1',
  ciphersuites: 'TLS_AES_128_GCM_SHA256',
});
setTimeout(() => {
  process.stderr.write(`bench-tlslink-end: ${role}: no end within 120 s\n`);
  process.exit(2);
}, 120_000).unref();

let cpu0: NodeJS.CpuUsage | undefined;
const done = (): never => {
  const c = process.cpuUsage(cpu0);
  process.stdout.write(`${((c.user + c.system) / 1e6).toFixed(4)}\n`);
  process.exit(0);
};

if (role === 'server') {
  let got = 0;
  const server = net.createServer({ pauseOnConnect: true }, (tcp) => {
    const s = new TlsLinkSocket(tcp, ctx);
    s.on('error', () => undefined);
    s.on('secure', () => (cpu0 = process.cpuUsage()));
    s.on('data', (chunk: Buffer) => {
      got += chunk.length;
      if (got >= total) done();
    });
  });
  server.listen(PORT, addr, () => process.stdout.write('ready\n'));
} else {
  const payload = Buffer.alloc(64 * 1024, 7);
  let seq = 0;
  const tcp = net.connect(PORT, addr, () => {
    const c = new TlsLinkSocket(tcp, ctx);
    const pump = (): void => {
      for (;;) {
        const header = Buffer.alloc(12);
        header.writeUInt32BE(seq++, 0);
        header.writeUInt32BE(payload.length, 8);
        c.queueFrame(header, 1024 * 1024);
        if (!c.queueFrame(payload, 1024 * 1024)) return;
      }
    };
    c.on('secure', () => {
      cpu0 = process.cpuUsage();
      pump();
    });
    c.on('drain', pump);
    c.on('error', done);
    c.on('end', done);
    c.on('close', done);
    c.resume();
  });
  tcp.on('error', () => undefined);
}
