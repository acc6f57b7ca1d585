// Unit tests of the SDK's reconnection policy (control/web/sdk/reconnect.js) in Node: the retry
// backoff stays bounded and within the grace period, and the ICE watchdog restarts a connection
// that fails at once, one that stays disconnected after the delay, and not one that heals.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffMs, attemptFits, IceWatchdog } from '../control/web/sdk/reconnect.js';

test('backoff doubles from 250 ms up to 4 s, with at most 20% jitter below', () => {
  const none = { random: () => 0 };
  assert.deepEqual([1, 2, 3, 4, 5, 6, 9].map((a) => backoffMs(a, none)), [250, 500, 1000, 2000, 4000, 4000, 4000]);
  for (let a = 1; a < 20; a++) {
    const d = backoffMs(a, { random: () => 0.999 });
    assert.ok(d >= 0.8 * backoffMs(a, none) && d <= backoffMs(a, none), `attempt ${a}: ${d}`);
  }
  // Attempts stop once the next would start past the deadline.
  assert.ok(attemptFits(0, 1000, 999));
  assert.ok(!attemptFits(0, 1000, 1000));
});

/** Fake timers: `fire()` runs the pending callbacks. */
function fakeTimers() {
  const pending = new Map();
  let next = 1;
  return {
    setTimer: (fn) => {
      pending.set(next, fn);
      return next++;
    },
    clearTimer: (id) => pending.delete(id),
    fire: () => {
      const fns = [...pending.values()];
      pending.clear();
      for (const fn of fns) fn();
    },
    get count() {
      return pending.size;
    },
  };
}

test('the ICE watchdog restarts on failed at once and on a lasting disconnected', () => {
  const t = fakeTimers();
  let restarts = 0;
  const dog = new IceWatchdog(() => restarts++, { delayMs: 3000, setTimer: t.setTimer, clearTimer: t.clearTimer });
  dog.update('connected');
  dog.update('failed');
  assert.equal(restarts, 1, 'failed restarts at once');
  dog.update('connecting');
  dog.update('connected');
  dog.update('disconnected');
  assert.equal(restarts, 1, 'disconnected waits');
  dog.update('disconnected');
  assert.equal(t.count, 1, 'one timer per spell');
  t.fire();
  assert.equal(restarts, 2, 'still disconnected after the delay: restart');
  // A disconnect that heals before the delay restarts nothing.
  dog.update('connected');
  dog.update('disconnected');
  dog.update('connected');
  assert.equal(t.count, 0);
  t.fire();
  assert.equal(restarts, 2);
  // Closing stops a pending restart.
  dog.update('disconnected');
  dog.update('closed');
  t.fire();
  assert.equal(restarts, 2);
});
