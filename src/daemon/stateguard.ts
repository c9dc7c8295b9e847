// The state directory is the daemon's memory of what it changed in the kernel: whoever can write
// it can make the daemon "restore" routes of their choosing. So it must belong to the user the
// daemon runs as (its effective uid: root, or the service's own user) and be writable by no one
// else, and only one daemon may use it at a time (an exclusive flock on `lock` inside, held for
// the daemon's life and released by the kernel when the process ends, however it ends).
import * as fs from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { IpdeadgateError } from '../errors';
import { loadNative } from '../sys/native';

export const STATE_LOCK = 'lock';

/**
 * Create the directory (0700) if it is missing, then refuse it unless it is a directory owned by
 * `uid` with no group or other write permission. Symlinks are followed (systemd's DynamicUser=
 * makes /var/lib/NAME one); what counts is the directory they lead to.
 */
export async function checkStateDir(dir: string, uid = process.geteuid?.() ?? 0): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
    throw new IpdeadgateError(
      err.code ?? 'EIO',
      `cannot create the state dir ${dir}: ${err.message} (pass --state-dir DIR)`,
    );
  });
  const st = await stat(dir);
  if (!st.isDirectory())
    throw new IpdeadgateError('ERR_STATE_DIR', `the state dir ${dir} is not a directory`);
  if (st.uid !== uid)
    throw new IpdeadgateError(
      'ERR_STATE_DIR',
      `the state dir ${dir} belongs to uid ${st.uid}, not to the daemon's uid ${uid}: whoever owns it ` +
        `could make the daemon change routes; use a directory of the daemon's user (chown ${uid} ${dir})`,
    );
  if ((st.mode & 0o022) !== 0)
    throw new IpdeadgateError(
      'ERR_STATE_DIR',
      `the state dir ${dir} is writable by ${st.mode & 0o020 ? 'its group' : 'others'} ` +
        `(mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}): others could change what the daemon ` +
        `restores; make it private (chmod 700 ${dir})`,
    );
}

/** An exclusive lock on the state dir; close() releases it (so does the process's end). */
export class StateDirLock {
  private constructor(
    readonly file: string,
    private fd: number | null,
  ) {}

  /** Take the lock, or throw naming the directory (and the holder's pid when it wrote one). */
  static acquire(dir: string): StateDirLock {
    const file = path.join(dir, STATE_LOCK);
    const { O_RDWR, O_CREAT, O_NOFOLLOW } = fs.constants;
    let fd: number;
    try {
      // libuv opens with O_CLOEXEC: a child process (the tunnel's) does not inherit the lock.
      fd = fs.openSync(file, O_RDWR | O_CREAT | O_NOFOLLOW, 0o600);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new IpdeadgateError(
        e.code ?? 'EIO',
        `cannot open the lock file ${file} of the state dir: ${e.message}` +
          (e.code === 'ELOOP' ? ' (it is a symlink; remove it)' : ''),
      );
    }
    let locked: boolean;
    try {
      locked = loadNative().flockExclusive(fd);
    } catch (err) {
      fs.closeSync(fd);
      throw new IpdeadgateError(
        'ERR_STATE_DIR',
        `cannot lock the state dir ${dir}: ${(err as Error).message}`,
      );
    }
    if (!locked) {
      let holder = '';
      try {
        holder = fs.readFileSync(fd, 'utf8').trim();
      } catch {
        /* unknown */
      }
      fs.closeSync(fd);
      throw new IpdeadgateError(
        'ERR_STATE_DIR_IN_USE',
        `another ipdeadgate${/^\d+$/.test(holder) ? ` (pid ${holder})` : ''} uses the state dir ${dir}; ` +
          'two daemons must not share one (pass --state-dir DIR)',
      );
    }
    // Who holds it, for the message above; informational only (the lock is the flock).
    try {
      fs.ftruncateSync(fd, 0);
      fs.writeSync(fd, `${process.pid}\n`, 0);
    } catch {
      /* a full disk: the lock holds without the pid */
    }
    return new StateDirLock(file, fd);
  }

  close(): void {
    if (this.fd === null) return;
    fs.closeSync(this.fd);
    this.fd = null;
  }
}
