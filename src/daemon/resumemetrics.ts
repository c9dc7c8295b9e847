// Flow resume's gauges (src/dgd/resume.ts), read from the engine's status at scrape time. Its
// recorders exist only while flows retransmit through a gateway: an interface absent here has no
// capture open for it.
import { Gauge, type Registry } from 'prom-client';
import type { DgdStatus } from '../dgd/engine';

export function defineResumeGauges(registers: Registry[], dgd: () => DgdStatus | null): void {
  new Gauge({
    name: 'ipdeadgate_resume_recorded_flows',
    help: 'Flows flow resume records now (retransmitting through a gateway), per interface',
    labelNames: ['interface'],
    registers,
    collect() {
      this.reset();
      for (const r of dgd()?.flow_resume?.recorders ?? []) this.set({ interface: r.interface }, r.flows);
    },
  });
  new Gauge({
    name: 'ipdeadgate_resume_captures_open',
    help: "1 while flow resume's capture on an interface is open",
    labelNames: ['interface'],
    registers,
    collect() {
      this.reset();
      for (const r of dgd()?.flow_resume?.recorders ?? [])
        this.set({ interface: r.interface }, r.open ? 1 : 0);
    },
  });
}
