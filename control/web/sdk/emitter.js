// @ts-check
// A small typed-by-convention event emitter used by the SDK.

/** Registers callbacks by event name and calls them in order. A throwing listener is reported on the console and does not stop the others. */
export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /**
   * Adds a listener. Returns a function that removes it.
   * @param {string} event
   * @param {(payload: any) => void} fn
   * @returns {() => void}
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  /**
   * Adds a listener called at most once.
   * @param {string} event
   * @param {(payload: any) => void} fn
   * @returns {() => void}
   */
  once(event, fn) {
    const off = this.on(event, (p) => {
      off();
      fn(p);
    });
    return off;
  }

  /** @param {string} event @param {Function} fn */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /** @param {string} event @param {any} [payload] */
  emit(event, payload) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(payload);
      } catch (e) {
        console.error(`[greenroom] listener for ${event} threw`, e);
      }
    }
    if (event !== '*') {
      for (const fn of [...(this._listeners.get('*') ?? [])]) {
        try {
          fn({ event, payload });
        } catch (e) {
          console.error('[greenroom] wildcard listener threw', e);
        }
      }
    }
  }
}
