// Open N loopback TCP connections (2N established sockets) and hold them until killed. Prints
// "ready N" once all are established. Bounded: exits by itself after 10 minutes.
import * as net from 'node:net';

const n = Number(process.argv[2] ?? 1000);
const held: net.Socket[] = [];
const server = net.createServer((s) => {
  s.on('error', () => undefined);
  held.push(s);
});
server.listen(0, '127.0.0.1', async () => {
  const port = (server.address() as net.AddressInfo).port;
  let open = 0;
  const batch = 200;
  for (let i = 0; i < n; i += batch) {
    await Promise.all(
      Array.from(
        { length: Math.min(batch, n - i) },
        () =>
          new Promise<void>((resolve, reject) => {
            const c = net.connect(port, '127.0.0.1', () => {
              open++;
              resolve();
            });
            c.on('error', reject);
            held.push(c);
          }),
      ),
    );
  }
  process.stdout.write(`ready ${open}\n`);
});
setTimeout(() => process.exit(0), 600_000).unref();
