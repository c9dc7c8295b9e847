// The session fault matrix: every fault in every state it can happen in, and the one exit each
// must end in (test/tunnel/sessionlife.test.ts on the JavaScript path, nativerelay.test.ts on the
// native relay's for the states a relayed session is in).
import type { SessionExit, SessionState } from '../../src/tunnel/sessionlife';

export type Fault = 'client reset' | 'stream reset' | 'link death' | 'bound' | 'stop' | 'service refused';

export interface FaultCase {
  state: SessionState;
  fault: Fault;
  exit: SessionExit;
}

export const FAULT_CASES: FaultCase[] = [
  { state: 'opening', fault: 'client reset', exit: 'local_reset' },
  { state: 'opening', fault: 'stream reset', exit: 'stream_reset' },
  { state: 'opening', fault: 'link death', exit: 'stream_reset' },
  { state: 'opening', fault: 'bound', exit: 'open_timeout' },
  { state: 'opening', fault: 'stop', exit: 'stopped' },
  { state: 'dialing', fault: 'service refused', exit: 'dial_failed' },
  { state: 'dialing', fault: 'stream reset', exit: 'stream_reset' },
  { state: 'dialing', fault: 'link death', exit: 'stream_reset' },
  { state: 'dialing', fault: 'bound', exit: 'dial_timeout' },
  { state: 'dialing', fault: 'stop', exit: 'stopped' },
  { state: 'bridged', fault: 'client reset', exit: 'local_reset' },
  { state: 'bridged', fault: 'stream reset', exit: 'stream_reset' },
  { state: 'bridged', fault: 'link death', exit: 'stream_reset' },
  { state: 'bridged', fault: 'stop', exit: 'stopped' },
  { state: 'half_closed', fault: 'client reset', exit: 'local_reset' },
  { state: 'half_closed', fault: 'stream reset', exit: 'stream_reset' },
  { state: 'half_closed', fault: 'link death', exit: 'stream_reset' },
  { state: 'half_closed', fault: 'bound', exit: 'close_timeout' },
  { state: 'half_closed', fault: 'stop', exit: 'stopped' },
];
