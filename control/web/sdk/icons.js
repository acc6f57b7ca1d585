// @ts-check
// Small DOM helpers shared by the call UI (`<greenroom-call>`) and the web app: `h()` builds
// elements, `icon()` draws the stroke icons (inline SVG: no icon or emoji font needed), and
// `avatar()` draws a coloured initials circle.

/**
 * Creates an element: `h('div', {class: 'x', onclick, testid: 'y', dataset: {...}}, child, 'text')`.
 * Attributes that are null/false are left out; `on*` attributes become listeners.
 * @param {string} tag
 * @param {Record<string, any>|null} [attrs]
 * @param {...any} children nodes, strings, arrays of them, or null/false (skipped)
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'testid') el.dataset.testid = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** The icons' SVG bodies (24 x 24 viewBox, stroked with currentColor). */
export const SVG = {
  mic: '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3"/>',
  micOff: '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3M4 4l16 16"/>',
  cam: '<rect x="3" y="7" width="12" height="10" rx="2"/><path d="M15 11l6-3v8l-6-3z"/>',
  camOff: '<rect x="3" y="7" width="12" height="10" rx="2"/><path d="M15 11l6-3v8l-6-3zM3 4l17 16"/>',
  screen: '<rect x="3" y="4" width="18" height="12" rx="2"/><path d="M8 20h8M12 16v4M9 10l3-3 3 3M12 7v6"/>',
  hand: '<path d="M8 13V5.5a1.5 1.5 0 0 1 3 0V12M11 11V4.5a1.5 1.5 0 0 1 3 0V12M14 11V6.5a1.5 1.5 0 0 1 3 0V15a6 6 0 0 1-6 6h-1a6 6 0 0 1-5-2.7L3 14.5a1.5 1.5 0 0 1 2.5-1.6L8 15"/>',
  leave: '<path d="M4 15c4.5-4 11.5-4 16 0l-2 3-3-1v-2.5a9 9 0 0 0-6 0V17l-3 1z"/>',
  people: '<circle cx="9" cy="8" r="3.5"/><path d="M2.5 20a6.5 6.5 0 0 1 13 0M16 4.5a3.5 3.5 0 0 1 0 7M18 14a6.5 6.5 0 0 1 3.5 6"/>',
  grid: '<rect x="3" y="3" width="8" height="8" rx="1"/><rect x="13" y="3" width="8" height="8" rx="1"/><rect x="3" y="13" width="8" height="8" rx="1"/><rect x="13" y="13" width="8" height="8" rx="1"/>',
  spot: '<rect x="3" y="3" width="18" height="13" rx="1.5"/><rect x="3" y="18" width="5" height="3" rx=".5"/><rect x="9.5" y="18" width="5" height="3" rx=".5"/><rect x="16" y="18" width="5" height="3" rx=".5"/>',
  end: '<rect x="6" y="6" width="12" height="12" rx="2"/>',
  live: '<circle cx="12" cy="12" r="4" fill="currentColor"/><path d="M6.3 6.3a8 8 0 0 0 0 11.4M17.7 6.3a8 8 0 0 1 0 11.4"/>',
  phone: '<path d="M5 3.5h3.5l2 5-2.5 1.6a11 11 0 0 0 5.9 5.9l1.6-2.5 5 2V19a2 2 0 0 1-2 2A17 17 0 0 1 3 5.5a2 2 0 0 1 2-2z"/>',
  video: '<rect x="3" y="7" width="12" height="10" rx="2"/><path d="M15 11l6-3v8l-6-3z"/>',
};

/**
 * An icon as a `<span class="svg-ico">` (aria-hidden).
 * @param {string} name a key of `SVG`
 * @returns {HTMLElement}
 */
export function icon(name) {
  const span = document.createElement('span');
  span.className = 'svg-ico';
  span.setAttribute('aria-hidden', 'true');
  span.innerHTML = `<svg viewBox="0 0 24 24" width="22" height="22" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round">${SVG[name] ?? ''}</svg>`;
  return span;
}

/** One or two initials of a name ("Alice Smith" -> "AS"). @param {string} name */
export function initials(name) {
  const parts = String(name || '?').split(/[\s._@-]+/).filter(Boolean);
  return (parts[0]?.[0] ?? '?') + (parts[1]?.[0] ?? '');
}

/** A stable colour for an id. @param {string} id */
export function avatarColor(id) {
  let hsh = 0;
  for (const c of String(id)) hsh = (hsh * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${hsh % 360} 45% 38%)`;
}

/**
 * A coloured initials circle.
 * @param {string} id colour seed (the user id)
 * @param {string} name
 * @param {string} [cls]
 */
export function avatar(id, name, cls = 'avatar') {
  const a = h('div', { class: cls }, initials(name));
  a.style.background = avatarColor(id);
  return a;
}
