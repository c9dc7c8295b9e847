// The daemon's state directory by default: the journal, the on/off setting, captures/ and
// incidents/. A module of its own so that commands reading it (`incidents`) need not load the daemon.
export const DEFAULT_STATE_DIR = '/var/lib/ipdeadgate';
