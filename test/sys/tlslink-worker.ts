// A worker thread for test/sys/tlslink-hostile.test.ts ("environment teardown"): it opens a pair of
// TLS links over loopback, keeps data flowing both ways, says 'streaming', and then ends as asked
// (terminated from outside, or process.exit() from inside) with both links open.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { TlsLinkContext, TlsLinkSocket } from '../../src/sys/tlslink';
import { LINK_ALPN } from '../../src/tunnel/link';

interface Data {
  ca: string;
  server: { cert: string; key: string };
  client: { cert: string; key: string };
  exitInside: boolean;
}
const d = workerData as Data;
const ctx = (server: boolean, pair: { cert: string; key: string }): TlsLinkContext =>
  new TlsLinkContext({
    server,
    ca: fs.readFileSync(d.ca),
    cert: fs.readFileSync(pair.cert),
    key: fs.readFileSync(pair.key),
    alpn: LINK_ALPN,
    ciphersuites: 'TLS_AES_128_GCM_SHA256',
  });
const serverCtx = ctx(true, d.server);
const clientCtx = ctx(false, d.client);
const chunk = Buffer.alloc(64 * 1024, 0x5a);
let received = 0;
let told = false;

function flood(s: TlsLinkSocket): void {
  s.on('error', () => undefined);
  s.on('data', (c: Buffer) => {
    received += c.length;
    if (received > 4 * 1024 * 1024 && !told) {
      told = true;
      parentPort!.postMessage('streaming');
      if (d.exitInside) setTimeout(() => process.exit(0), 20);
    }
  });
  const more = (): void => {
    while (s.write(chunk));
  };
  s.on('drain', more);
  s.once('secure', more);
}

const server = net.createServer({ pauseOnConnect: true }, (tcp) => flood(new TlsLinkSocket(tcp, serverCtx)));
server.listen(0, '127.0.0.1', () => {
  const port = (server.address() as net.AddressInfo).port;
  const tcp = net.connect(port, '127.0.0.1', () => flood(new TlsLinkSocket(tcp, clientCtx)));
});
