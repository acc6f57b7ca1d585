// @ts-check
// Reconnection policy of a Call (docs/PROTOCOL.md section 4.5 and "ICE restart" in section 5):
// the retry schedule after the signaling socket drops, and the watchdog that restarts ICE on a
// PeerConnection that stays disconnected. Pure timing logic, no sockets: unit-tested in Node.

/**
 * Delays between reconnect attempts: 250 ms doubling up to `maxMs`, with up to 20% jitter so a
 * server restart does not get every client back at the same instant.
 * @param {number} attempt  1 for the first retry
 * @param {{baseMs?: number, maxMs?: number, random?: () => number}} [opts]
 * @returns {number} milliseconds to wait before this attempt
 */
export function backoffMs(attempt, { baseMs = 250, maxMs = 4000, random = Math.random } = {}) {
  const exp = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(exp * (1 - 0.2 * random()));
}

/**
 * Whether another attempt fits before the deadline (the server's resume grace period): an
 * attempt that would start after it cannot resume the session any more.
 * @param {number} now
 * @param {number} deadline
 * @param {number} delayMs
 */
export function attemptFits(now, deadline, delayMs) {
  return now + delayMs < deadline;
}

/**
 * Calls `restart()` when a PeerConnection's state is `failed`, or stays `disconnected` for
 * `delayMs` (a short `disconnected` often heals by itself). One restart per bad spell: the next
 * one needs the connection to have been `connected` again, or `delayMs` more of trouble.
 */
export class IceWatchdog {
  /**
   * @param {() => void} restart
   * @param {{delayMs?: number, setTimer?: typeof setTimeout, clearTimer?: typeof clearTimeout}} [opts]
   */
  constructor(restart, { delayMs = 3000, setTimer = setTimeout, clearTimer = clearTimeout } = {}) {
    this.restart = restart;
    this.delayMs = delayMs;
    this._set = setTimer;
    this._clear = clearTimer;
    /** @type {ReturnType<typeof setTimeout>|null} */
    this._timer = null;
    /** Restarts done (for tests and diagnostics). */
    this.restarts = 0;
  }

  /** @param {string} state  The PeerConnection's `connectionState`. */
  update(state) {
    if (state === 'connected' || state === 'new' || state === 'connecting' || state === 'closed') {
      this.stop();
      return;
    }
    if (state === 'failed') {
      this.stop();
      this._fire();
      return;
    }
    if (state === 'disconnected' && !this._timer) {
      this._timer = this._set(() => {
        this._timer = null;
        this._fire();
      }, this.delayMs);
    }
  }

  _fire() {
    this.restarts += 1;
    this.restart();
  }

  /** Cancels a pending restart. */
  stop() {
    if (this._timer) this._clear(this._timer);
    this._timer = null;
  }
}
