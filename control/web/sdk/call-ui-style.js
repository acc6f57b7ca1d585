// @ts-check
// The stylesheet of `<greenroom-call>` (inside its shadow root). Colours are custom properties on
// the host: a page themes the element with e.g. `greenroom-call { --accent: #7c3aed; }`.

/**
 * The rules the element shares with the Greenroom web app, which puts them in its page ahead of
 * app.css (control/web/app.js): buttons, pills, avatars, icons, hints, toasts. They use the
 * colour custom properties (`--surface-2`, `--accent`, ...) of the element's host or the page's
 * root.
 */
export const SHARED_CSS = `
h2 { font-size: 1rem; margin: 0; }
.hint { display: block; font-size: 0.8rem; color: var(--muted); margin-top: 4px; }
.btn { border: 0; border-radius: 10px; padding: 11px 18px; font: inherit; font-weight: 600; cursor: pointer; background: var(--surface-2); color: var(--text); }
.btn:hover:not(:disabled) { filter: brightness(1.15); }
.btn:disabled { opacity: .45; cursor: not-allowed; }
.btn.primary { background: var(--accent); color: #04150b; }
.btn.danger { background: var(--danger); color: #fff; }
.btn.small { padding: 6px 12px; font-size: 0.85rem; border-radius: 8px; }
.btn.ghost { background: transparent; border: 1px solid var(--border); }
.icon-btn { background: none; border: 0; color: var(--muted); font-size: 1.1rem; cursor: pointer; }
.pill { font-size: 0.78rem; padding: 3px 10px; border-radius: 999px; background: var(--surface-2); color: var(--muted); white-space: nowrap; }
.pill.ok { color: #8ff0b8; background: #16331f; }
.pill.bad { color: #ffb3b5; background: #3a1719; }
.pill.warn { color: #1b1300; background: var(--warn); }
.avatar { width: 56px; height: 56px; border-radius: 50%; background: #3b4252; color: #fff; display: flex; align-items: center; justify-content: center; font-weight: 700; font-size: 1.2rem; text-transform: uppercase; }
.avatar.big { width: 88px; height: 88px; font-size: 2rem; }
.svg-ico { display: inline-flex; line-height: 0; }
.toast { background: #2a2f3a; border: 1px solid var(--border); border-radius: 10px; padding: 10px 14px; box-shadow: 0 8px 24px rgba(0,0,0,.35); font-size: 0.9rem; animation: in .2s ease-out; }
.toast.bad { border-color: #7a2a2d; }
@keyframes in { from { transform: translateY(8px); opacity: 0; } to { transform: none; opacity: 1; } }
`;

/** The element's whole stylesheet: its own rules around {@link SHARED_CSS}. */
export const CALL_UI_CSS = `
:host {
  --bg: #0f1115; --surface: #181b22; --surface-2: #20242d; --border: #2c313c;
  --text: #eef0f4; --muted: #9aa3b2; --accent: #2fbf71; --danger: #e5484d; --warn: #f5a524;
  --radius: 14px;
  display: flex; flex-direction: column; position: relative; min-height: 240px;
  background: var(--bg); color: var(--text); font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
.call { flex: 1; display: flex; flex-direction: column; min-height: 0; position: relative; }
.call.no-ui > :not(.status), .controls:empty { display: none; }
.status { padding: 8px 14px; color: var(--muted); }
.status:empty { display: none; }
.status.bad { color: #ffd0d1; }
${SHARED_CSS}
select { display: block; width: 100%; margin-top: 5px; padding: 10px 12px; border-radius: 10px; border: 1px solid var(--border); background: var(--bg); color: var(--text); font: inherit; }
label { display: block; margin: 8px 0 0; font-size: 0.88rem; color: var(--muted); }

/* The head row: title, people count, LIVE / Backstage, connection. */
.call-head { display: flex; align-items: center; gap: 8px; padding: 8px 14px; min-width: 0; border-bottom: 1px solid var(--border); }
.call-head:empty { display: none; }
.call-head .title { font-weight: 600; min-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.call-head .spacer { flex: 1; }
.pill.live { color: #fff; background: var(--danger); font-weight: 700; letter-spacing: .5px; }
.pill.backstage { color: #1b1300; background: var(--warn); font-weight: 600; }

/* Tiles: grid or spotlight. */
.call-body { flex: 1; display: flex; min-height: 0; }
.stage { flex: 1; padding: 14px; display: grid; gap: 12px; grid-template-columns: repeat(auto-fit, minmax(min(100%, 280px), 1fr)); grid-auto-rows: minmax(160px, 1fr); align-content: center; min-height: 0; overflow: auto; }
.stage.spotlight { display: flex; flex-direction: column; overflow: hidden; }
.spot-main { flex: 1 1 0; min-height: 200px; display: grid; }
.spot-main > .tile { height: 100%; }
.spot-strip { display: flex; gap: 10px; overflow-x: auto; flex: 0 0 auto; }
.spot-strip .tile { width: 200px; flex: 0 0 auto; aspect-ratio: 16 / 10; }
.tile { position: relative; background: #000; border-radius: var(--radius); overflow: hidden; border: 2px solid transparent; min-height: 120px; transition: border-color .15s; }
.tile.speaking { border-color: var(--accent); box-shadow: 0 0 0 3px rgba(47, 191, 113, .25); }
.tile video { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: cover; display: block; }
.tile.local video.cam { transform: scaleX(-1); }
.tile.screen video { object-fit: contain; background: #05070a; }
.tile .name { position: absolute; left: 10px; bottom: 10px; display: flex; align-items: center; gap: 6px; background: rgba(0,0,0,.6); padding: 3px 10px; border-radius: 8px; font-size: 0.85rem; max-width: calc(100% - 20px); }
.tile .name span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.tile .placeholder { position: absolute; inset: 0; display: flex; flex-direction: column; align-items: center; justify-content: center; gap: 10px; background: radial-gradient(circle at 50% 40%, #242a35, #12151b); color: var(--muted); font-size: 0.9rem; }
.tile .placeholder .label { font-size: 0.85rem; }
.badge-muted { display: inline-flex; align-items: center; gap: 3px; color: #fff; background: var(--danger); border-radius: 6px; padding: 0 6px; font-size: 0.75rem; font-weight: 600; }
.badge-muted .svg-ico svg { width: 14px; height: 14px; }

/* The control bar. */
.controls { display: flex; gap: 10px; justify-content: center; align-items: center; padding: 12px; border-top: 1px solid var(--border); background: #12151b; flex-wrap: wrap; position: sticky; bottom: 0; z-index: 5; }
.ctrl { display: inline-flex; flex-direction: column; align-items: center; gap: 3px; background: var(--surface-2); color: var(--text); border: 0; border-radius: 12px; padding: 8px 12px; min-width: 64px; font: inherit; font-size: 0.75rem; cursor: pointer; }
.ctrl .ico { line-height: 0; }
.ctrl.off { background: #3a1719; color: #ffb3b5; }
.ctrl.active { background: #16331f; color: #8ff0b8; }
.ctrl.leave { background: var(--danger); color: #fff; }
.ctrl:disabled { opacity: .45; cursor: not-allowed; }

/* Banners float over the call: showing one never moves the video tiles. */
.banners { position: absolute; top: 10px; left: 14px; right: 14px; z-index: 6; display: flex; flex-direction: column; gap: 8px; pointer-events: none; }
.banners:empty { display: none; }
.banner { display: flex; gap: 12px; align-items: flex-start; justify-content: space-between; border-radius: 10px; padding: 10px 14px; background: var(--surface-2); flex-wrap: wrap; pointer-events: auto; box-shadow: 0 8px 24px rgba(0, 0, 0, .45); }
.banner.bad { background: #36171a; color: #ffd0d1; }
.banner.warn { background: #33270c; color: #ffe2a8; }
.banner.info { background: #13233d; color: #cfe1ff; }
.banner strong { color: #fff; }
.banner ol { margin: 4px 0 0; padding-left: 20px; font-size: 0.88rem; }

/* The People panel: requests, participants, moderation, devices. */
.panel { width: 320px; border-left: 1px solid var(--border); background: var(--surface); padding: 14px; overflow: auto; }
.panel-head { display: flex; justify-content: space-between; align-items: center; margin-bottom: 10px; }
.people { list-style: none; margin: 0; padding: 0; }
.people li { display: flex; align-items: center; gap: 10px; padding: 8px 0; border-bottom: 1px solid var(--border); flex-wrap: wrap; }
.people li .who { flex: 1 1 120px; min-width: 0; overflow: hidden; text-overflow: ellipsis; }
.people li .who small { display: block; color: var(--muted); }
.people .avatar { width: 34px; height: 34px; font-size: 0.85rem; }
.person-actions { display: flex; gap: 6px; flex-wrap: wrap; justify-content: flex-end; }
.request { background: #13233d; border-radius: 10px; padding: 10px 12px; margin-bottom: 10px; }
.request p { margin: 0 0 8px; display: flex; align-items: center; gap: 6px; }
.devices-panel { margin-top: 18px; border-top: 1px solid var(--border); padding-top: 12px; }

/* Toasts: centered above the control bar, never over the People panel's device pickers. */
.toasts { position: absolute; left: 50%; transform: translateX(-50%); bottom: 90px; display: flex; flex-direction: column; gap: 8px; z-index: 20; max-width: min(360px, calc(100% - 32px)); pointer-events: none; }

/* Audio room: large avatar seats, centered and wrapping, using the whole stage. */
.stage.room { display: flex; flex-direction: column; align-items: stretch; padding: 20px 24px; overflow: auto; }
.room h3 { font-size: 0.8rem; text-transform: uppercase; letter-spacing: 1px; color: var(--muted); margin: 18px 0 10px; text-align: center; }
.room .room-grid { display: flex; flex-wrap: wrap; justify-content: center; align-content: flex-start; gap: 28px 32px; }
.room .room-grid .empty { width: 100%; text-align: center; }
.empty { color: var(--muted); font-size: 0.9rem; }
.seat { display: flex; flex-direction: column; align-items: center; gap: 6px; text-align: center; position: relative; width: 140px; font-size: 0.95rem; }
.seat .avatar { width: 112px; height: 112px; font-size: 2.4rem; border: 3px solid transparent; transition: border-color .15s; }
.seat.speaking .avatar { border-color: var(--accent); box-shadow: 0 0 0 4px rgba(47, 191, 113, .25); }
.seat .role { color: var(--muted); font-size: 0.75rem; }
.seat .hand { position: absolute; right: 10px; top: 0; }
.seat .hand .svg-ico svg { width: 20px; height: 20px; color: var(--warn); }
.seat .badge-muted { position: absolute; top: 84px; right: 16px; }
.seat > :not(.avatar) { max-width: 100%; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.room .room-grid.audience { gap: 20px 24px; }
.room .room-grid.audience .seat { width: 104px; }
.room .room-grid.audience .seat .avatar { width: 76px; height: 76px; font-size: 1.6rem; }
.room .room-grid.audience .seat .badge-muted { top: 56px; right: 10px; }

/* Reactions: a bar for those allowed to react; received reactions float up for a few seconds. */
.reaction-bar { display: flex; gap: 6px; justify-content: center; padding: 6px 12px 0; background: #12151b; border-top: 1px solid var(--border); }
.react-btn { border: 0; background: var(--surface-2); border-radius: 999px; width: 40px; height: 40px; font-size: 1.25rem; line-height: 1; cursor: pointer; }
.react-btn:hover { filter: brightness(1.25); }
.reactions { position: absolute; left: 24px; bottom: 140px; z-index: 7; display: flex; flex-direction: column; gap: 8px; pointer-events: none; }
.reaction-pop { display: flex; align-items: center; gap: 8px; background: rgba(24, 27, 34, .92); border: 1px solid var(--border); border-radius: 999px; padding: 4px 14px 4px 6px; animation: float-in .25s ease-out; }
.reaction-pop .emoji { font-size: 1.8rem; line-height: 1; }
.reaction-pop .who { font-size: 0.85rem; color: var(--text); max-width: 180px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
@keyframes float-in { from { transform: translateY(16px); opacity: 0; } to { transform: none; opacity: 1; } }
@media (prefers-reduced-motion: reduce) { .reaction-pop, .toast { animation: none; } }

@media (max-width: 820px) {
  .panel { position: fixed; inset: 56px 0 76px 0; width: auto; z-index: 10; border-left: 0; }
  .stage { padding: 8px; grid-auto-rows: minmax(140px, 1fr); }
  .controls { gap: 6px; padding: 10px 6px; flex-wrap: nowrap; overflow-x: auto; justify-content: flex-start; }
  .controls > :first-child { margin-left: auto; }
  .controls > :last-child { margin-right: auto; }
  .ctrl { min-width: 48px; padding: 10px 8px; flex: 0 0 auto; }
  .ctrl .lbl { display: none; }
  .call-head .pill.count { display: none; }
  .seat { width: 112px; }
  .seat .avatar { width: 88px; height: 88px; font-size: 1.9rem; }
  .seat .badge-muted { top: 64px; right: 8px; }
  .room .room-grid { gap: 20px; }
  .reactions { bottom: 130px; left: 12px; }
}
`;
