// @ts-check
// Matched replies (protocol 2, docs/PROTOCOL.md): every request carries a fresh `request_id`;
// the server echoes it in its direct reply and in any `error` the request causes.

/** @typedef {import('./types/wire').ServerMessage & {request_id?: string}} TaggedMessage */

let counter = 0;

/**
 * A fresh request id: `<prefix>-<n>-<random>` (within the protocol's 1-64 characters of
 * `A-Z a-z 0-9 _ - . :`).
 * @param {string} prefix
 * @returns {string}
 */
export function newRequestId(prefix) {
  counter += 1;
  return `${prefix}-${counter}-${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * @typedef {object} Waiter
 * @property {string} type  The request's message type (for timeouts and errors).
 * @property {(m: any) => void} resolve
 * @property {(e: Error) => void} reject
 * @property {ReturnType<typeof setTimeout>} timer
 */

/** The requests of one socket that still wait for their reply, by `request_id`. */
export class PendingRequests {
  /**
   * @param {string} prefix  Request ids start with it (e.g. `call`, `ring`).
   * @param {(code: string, message: string, type: string) => Error} makeError  Builds the
   *   error for a timeout or a closed socket.
   */
  constructor(prefix, makeError) {
    this.prefix = prefix;
    this.makeError = makeError;
    /** @type {Map<string, Waiter>} */
    this.waiting = new Map();
  }

  /**
   * Registers a request; the promise settles with its reply, its error, a timeout or `rejectAll`.
   * @param {string} type
   * @param {number} timeoutMs
   * @returns {{requestId: string, promise: Promise<any>}}
   */
  open(type, timeoutMs) {
    const requestId = newRequestId(this.prefix);
    /** @type {Promise<any>} */
    const promise = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(requestId);
        reject(this.makeError('timeout', `no answer to ${type} from the server`, type));
      }, timeoutMs);
      this.waiting.set(requestId, { type, resolve, reject, timer });
    });
    return { requestId, promise };
  }

  /**
   * Settles the waiter of `requestId` with a reply (or rejects it with `error`).
   * @param {string|undefined} requestId
   * @param {any} reply
   * @param {Error} [error]
   * @returns {boolean} whether a waiter took it
   */
  settle(requestId, reply, error) {
    if (!requestId) return false;
    const w = this.waiting.get(requestId);
    if (!w) return false;
    this.waiting.delete(requestId);
    clearTimeout(w.timer);
    if (error) w.reject(error);
    else w.resolve(reply);
    return true;
  }

  /**
   * Rejects every waiting request (the socket closed, the call is over).
   * @param {Error} err
   */
  rejectAll(err) {
    const all = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of all) {
      clearTimeout(w.timer);
      w.reject(err);
    }
  }
}
