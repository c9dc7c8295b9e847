// Standard lab topologies shared by tests, the demo and the benchmarks.
import { Lab, type LabSpec } from './lab';

/** Addresses of the dead-gateway lab. */
export const DGD = {
  client4: '198.18.1.10',
  r1_4: '198.18.1.1',
  r2_4: '198.18.1.2',
  server4: '198.18.2.10',
  r1s4: '198.18.2.1',
  r2s4: '198.18.2.2',
  client6: '2001:db8:1::10',
  r1_6: '2001:db8:1::1',
  r2_6: '2001:db8:1::2',
  server6: '2001:db8:2::10',
  r1s6: '2001:db8:2::1',
  r2s6: '2001:db8:2::2',
} as const;

/**
 * client --lan(bridge)-- r1, r2 --wan(bridge)-- server.
 * The client has two default routes: via r1 (metric 100, preferred) and r2 (metric 200).
 * The server returns traffic via r2 (an asymmetric path), so a flow survives r1's death once the
 * client's own routes move to r2. r1's LAN side is "lan0" in r1; kill it with lab.killSilently('r1','lan0').
 */
export function dgdLabSpec(): LabSpec {
  return {
    hosts: {
      client: {
        ip: [
          ['route', 'add', 'default', 'via', DGD.r1_4, 'dev', 'lan0', 'metric', '100'],
          ['route', 'add', 'default', 'via', DGD.r2_4, 'dev', 'lan0', 'metric', '200'],
          ['-6', 'route', 'add', 'default', 'via', DGD.r1_6, 'dev', 'lan0', 'metric', '100'],
          ['-6', 'route', 'add', 'default', 'via', DGD.r2_6, 'dev', 'lan0', 'metric', '200'],
        ],
      },
      r1: { router: true },
      r2: { router: true },
      server: {
        ip: [
          ['route', 'add', '198.18.1.0/24', 'via', DGD.r2s4, 'dev', 'wan0'],
          ['-6', 'route', 'add', '2001:db8:1::/64', 'via', DGD.r2s6, 'dev', 'wan0'],
        ],
      },
    },
    lans: [
      {
        name: 'lan',
        members: [
          { host: 'client', iface: 'lan0', addrs: [`${DGD.client4}/24`, `${DGD.client6}/64`] },
          { host: 'r1', iface: 'lan0', addrs: [`${DGD.r1_4}/24`, `${DGD.r1_6}/64`] },
          { host: 'r2', iface: 'lan0', addrs: [`${DGD.r2_4}/24`, `${DGD.r2_6}/64`] },
        ],
      },
      {
        name: 'wan',
        members: [
          { host: 'server', iface: 'wan0', addrs: [`${DGD.server4}/24`, `${DGD.server6}/64`] },
          { host: 'r1', iface: 'wan0', addrs: [`${DGD.r1s4}/24`, `${DGD.r1s6}/64`] },
          { host: 'r2', iface: 'wan0', addrs: [`${DGD.r2s4}/24`, `${DGD.r2s6}/64`] },
        ],
      },
    ],
  };
}

export function dgdLab(): Promise<Lab> {
  return Lab.create(dgdLabSpec());
}

/** Two hosts on one veth pair: a (198.18.0.1, 2001:db8::1) and b (198.18.0.2, 2001:db8::2). */
export function pairLab(): Promise<Lab> {
  return Lab.create({
    hosts: { a: {}, b: {} },
    lans: [
      {
        name: 'ab',
        members: [
          { host: 'a', iface: 'eth0', addrs: ['198.18.0.1/24', '2001:db8::1/64'] },
          { host: 'b', iface: 'eth0', addrs: ['198.18.0.2/24', '2001:db8::2/64'] },
        ],
      },
    ],
  });
}
