// muster console: plain JavaScript, no build step, no dependency. Every call goes to
// the public HTTP API (/v1/...) with the signed-in token; the token lives in this
// tab's sessionStorage only. The server says which role a token has in the response
// header X-Muster-Role; actions the role may not take are not shown (and the API
// would answer 403 anyway).
'use strict';
(() => {
  const store = window.sessionStorage;
  const K = { token: 'muster.token', role: 'muster.role', human: 'muster.human', lease: 'muster.lease', name: 'muster.name' };
  const STATES = ['blocked', 'scheduled', 'pending', 'assigned', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'];
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const $main = document.getElementById('main');
  const show = (...children) => append($main, children);
  // replaceChildren, skipping null / false children (rendered conditionally).
  const fill = (el, ...children) => { el.replaceChildren(); return append(el, children); };

  // ---------------------------------------------------------------- session and API

  const session = {
    get token() { return store.getItem(K.token); },
    get role() { return store.getItem(K.role) || 'read'; },
  };
  const can = {
    cancel: () => session.role === 'admin' || session.role === 'submit',
    admin: () => session.role === 'admin',
    read: () => ['admin', 'submit', 'read'].includes(session.role),
    register: () => session.role === 'admin' || session.role === 'agent',
  };

  class ApiError extends Error {
    constructor(status, problem) {
      const detail = problem && typeof problem === 'object' ? (problem.detail || problem.title) : String(problem || '');
      super(`${status}: ${detail || 'request failed'}`);
      this.status = status;
      this.problem = problem;
    }
  }

  async function call(token, method, path, body, signal) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
    const text = await res.text();
    let data = null;
    if (text) { try { data = JSON.parse(text); } catch { data = text; } }
    if (!res.ok) throw Object.assign(new ApiError(res.status, data), { res });
    return { data, res };
  }

  // With the signed-in token; keeps the role up to date and signs out on 401.
  async function api(method, path, body, signal) {
    try {
      const { data, res } = await call(session.token, method, path, body, signal);
      noteRole(res);
      return data;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) signOut('The token was refused (401): sign in again.');
      throw e;
    }
  }
  const get = (path, signal) => api('GET', path, undefined, signal);
  const post = (path, body) => api('POST', path, body === undefined ? {} : body);

  function noteRole(res) {
    const role = res.headers.get('X-Muster-Role');
    if (role && role !== store.getItem(K.role)) { store.setItem(K.role, role); showChrome(); }
  }

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k === 'value') el.value = v;
      else if (k === 'checked') el.checked = !!v;
      else if (k === 'style') el.style.cssText = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const svgNS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, text) {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }
  const badge = (st) => h('span', { class: `badge s-${st}`, 'data-state': st }, st);
  const json = (v) => h('pre', {}, v === undefined || v === null ? 'null' : JSON.stringify(v, null, 2));
  function ago(iso) {
    if (!iso) return '—';
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return iso;
    return h('span', { title: iso }, dur(Date.now() - t, true));
  }
  function dur(ms, past) {
    if (ms === null || ms === undefined) return '—';
    const a = Math.abs(ms);
    const txt = a < 1000 ? `${Math.round(a)} ms` : a < 60e3 ? `${(a / 1000).toFixed(a < 10e3 ? 1 : 0)} s`
      : a < 3600e3 ? `${Math.floor(a / 60e3)} min ${Math.round((a % 60e3) / 1000)} s`
        : a < 86400e3 ? `${Math.floor(a / 3600e3)} h ${Math.round((a % 3600e3) / 60e3)} min` : `${Math.floor(a / 86400e3)} d`;
    if (!past) return txt;
    return ms >= 0 ? `${txt} ago` : `in ${txt}`;
  }
  function flash(msg, err) {
    const box = document.getElementById('flash');
    const m = h('div', { class: err ? 'msg err' : 'msg' }, msg);
    box.append(m);
    setTimeout(() => m.remove(), err ? 7000 : 3500);
  }
  function act(button, fn) {
    return async (ev) => {
      if (ev) ev.preventDefault();
      if (button) button.disabled = true;
      try { await fn(); } catch (e) { flash(e.message, true); } finally { if (button) button.disabled = false; }
    };
  }
  // An action button: only built when the role may take the action.
  function actionButton(label, action, fn, extra) {
    const b = h('button', Object.assign({ class: 'action', 'data-action': action, type: 'button' }, extra || {}), label);
    b.addEventListener('click', act(b, fn));
    return b;
  }

  // ---------------------------------------------------------------- live events (SSE over fetch)

  // EventSource cannot send an Authorization header, so the stream is read with fetch.
  async function readSse(path, lastId, onEvent, signal) {
    const headers = { Authorization: `Bearer ${session.token}`, Accept: 'text/event-stream' };
    if (lastId) headers['Last-Event-ID'] = lastId;
    const res = await fetch(path, { headers, signal });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    let ev = { data: [], id: null, event: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (ev.data.length) onEvent({ id: ev.id, event: ev.event, data: ev.data.join('\n') });
          ev = { data: [], id: null, event: null };
          continue;
        }
        if (line.startsWith(':')) continue;
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        let val = c < 0 ? '' : line.slice(c + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'data') ev.data.push(val);
        else if (field === 'id') ev.id = val;
        else if (field === 'event') ev.event = val;
      }
    }
  }

  // One stream for the whole console: per-minute throughput and failures of the last
  // hour (replayed from the queues' event streams on start), and wake-ups for pages.
  const live = {
    minutes: new Map(), // minute (ms) -> { ok, failed, retried }
    seen: new Set(),
    lastId: null,
    listeners: new Set(),
    abort: null,
    start() {
      if (this.abort) return;
      this.abort = new AbortController();
      // "<ms>-0@" (no queue) resumes every queue's stream from that time: the last hour.
      this.lastId = this.lastId || `${Date.now() - 3600e3}-0@`;
      this.loop(this.abort.signal);
    },
    stop() { if (this.abort) this.abort.abort(); this.abort = null; this.minutes.clear(); this.seen.clear(); this.lastId = null; },
    async loop(signal) {
      const el = document.getElementById('live');
      while (!signal.aborted) {
        try {
          el.className = 'live on';
          await readSse('/v1/events', this.lastId, (m) => this.onMessage(m), signal);
        } catch (e) {
          if (signal.aborted) return;
          if (e instanceof ApiError && (e.status === 401 || e.status === 403)) { el.hidden = true; return; }
        }
        el.className = 'live off';
        await sleep(1500);
      }
    },
    onMessage(m) {
      if (m.id) {
        if (this.seen.has(m.id)) return;
        this.seen.add(m.id);
        if (this.seen.size > 50000) this.seen = new Set([...this.seen].slice(-25000));
        this.lastId = m.id;
      }
      let e;
      try { e = JSON.parse(m.data); } catch { return; }
      const minute = Math.floor((e.ts || Date.now()) / 60e3) * 60e3;
      let b = this.minutes.get(minute);
      if (!b) { b = { ok: 0, failed: 0, retried: 0 }; this.minutes.set(minute, b); }
      if (e.type === 'task.succeeded') b.ok++;
      else if (e.type === 'task.failed') b.failed++;
      else if (e.type === 'task.retrying') b.retried++;
      const cutoff = Date.now() - 3660e3;
      for (const k of this.minutes.keys()) if (k < cutoff) this.minutes.delete(k);
      for (const f of this.listeners) f(e);
    },
    on(f) { this.listeners.add(f); return () => this.listeners.delete(f); },
  };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // ---------------------------------------------------------------- pages and routing

  let page = null; // { timers, cleanups }
  function newPage() {
    if (page) {
      page.timers.forEach(clearInterval);
      page.cleanups.forEach((f) => { try { f(); } catch { /* ignore */ } });
    }
    page = { timers: [], cleanups: [] };
    return page;
  }
  function every(ms, f) { const p = page; f(); p.timers.push(setInterval(f, ms)); }
  // Runs f at most every `ms` while events arrive (to refresh counts live).
  function onEvents(ms, f, filter) {
    let due = null;
    page.cleanups.push(live.on((e) => {
      if (filter && !filter(e)) return;
      if (due) return;
      due = setTimeout(() => { due = null; f(); }, ms);
    }));
    page.cleanups.push(() => clearTimeout(due));
  }

  const routes = {
    overview: pageOverview, queues: pageQueues, tasks: pageTasks, task: pageTask, nodes: pageNodes,
    schedules: pageSchedules, schedule: pageSchedule, batches: pageBatches, batch: pageBatch, work: pageWork,
  };

  function route() {
    newPage();
    if (!session.token) { showChrome(); renderSignIn(); return; }
    const hash = location.hash.replace(/^#\/?/, '');
    const [pathPart, query] = hash.split('?');
    const parts = pathPart.split('/').map(decodeURIComponent);
    const name = parts[0] || (can.read() ? 'overview' : 'work');
    const params = new URLSearchParams(query || '');
    const fn = routes[name] || pageOverview;
    const navName = { task: 'tasks', batch: 'batches', schedule: 'schedules' }[name] || name;
    document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.page === navName));
    showChrome();
    $main.replaceChildren();
    $main.dataset.page = name;
    Promise.resolve(fn(parts.slice(1), params)).catch((e) => {
      show(h('p', { class: 'error' }, e.message));
    });
  }

  function showChrome() {
    const signed = !!session.token;
    document.getElementById('nav').hidden = !signed;
    document.getElementById('signout').hidden = !signed;
    const role = document.getElementById('role');
    role.hidden = !signed;
    role.textContent = signed ? session.role : '';
    document.getElementById('live').hidden = !signed || !can.read();
    document.querySelectorAll('#nav a').forEach((a) => {
      a.hidden = signed && !can.read() && a.dataset.page !== 'work';
    });
  }

  function signOut(msg) {
    live.stop();
    store.removeItem(K.token);
    store.removeItem(K.role);
    if (msg) flash(msg, true);
    location.hash = '#/';
    route();
  }

  function renderSignIn() {
    const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', placeholder: 'token', required: true });
    const err = h('p', { class: 'error', id: 'signin-error' });
    const form = h('form', { id: 'signin', class: 'panel' },
      h('h1', {}, 'Sign in'),
      h('p', { class: 'muted' }, 'Paste a muster token (admin, submit, read or agent). It is kept in this tab only (sessionStorage) and sent as a Bearer token to the API.'),
      input, h('button', { class: 'primary', type: 'submit', id: 'signin-submit' }, 'Sign in'), err);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      err.textContent = '';
      try {
        // A GET has no side effect; the answer's X-Muster-Role says what the token may do.
        let role = null;
        try {
          const { res } = await call(token, 'GET', '/v1/queues');
          role = res.headers.get('X-Muster-Role') || 'read';
        } catch (e) {
          if (!(e instanceof ApiError) || e.status !== 403) throw e;
          role = e.res.headers.get('X-Muster-Role') || 'agent';
        }
        store.setItem(K.token, token);
        store.setItem(K.role, role);
        if (can.read()) live.start();
        location.hash = can.read() ? '#/overview' : '#/work';
        route();
      } catch (e) {
        err.textContent = e instanceof ApiError && e.status === 401 ? 'Unknown token.' : e.message;
      }
    });
    $main.replaceChildren(form);
    input.focus();
  }

  // ---------------------------------------------------------------- Overview

  async function pageOverview() {
    const cards = h('div', { class: 'cards', id: 'cards' });
    const chart = h('div', { class: 'panel' },
      h('div', { class: 'inline', style: 'justify-content: space-between' },
        h('h2', {}, 'Throughput and failures, last hour (per minute)'),
        h('div', { class: 'legend' }, h('span', {}, h('i', { style: 'background: var(--ok)' }), 'succeeded'),
          h('span', {}, h('i', { style: 'background: var(--warn)' }), 'retried'),
          h('span', {}, h('i', { style: 'background: var(--bad)' }), 'failed'))),
      h('div', { id: 'chart' }));
    const depths = h('div', { class: 'panel' }, h('h2', {}, 'Queue depths'), h('div', { id: 'depths' }, 'loading…'));
    const nodes = h('div', { class: 'panel' }, h('h2', {}, 'Active nodes'), h('div', { id: 'active-nodes' }, 'loading…'));
    show(h('h1', {}, 'Overview'), cards, chart, depths, nodes);
    live.start();

    let queues = [];
    let nodeList = [];
    const drawCards = () => {
      const sum = (st) => queues.reduce((a, q) => a + (q.counts[st] || 0), 0);
      let ok = 0; let failed = 0; let retried = 0;
      const cutoff = Date.now() - 3600e3;
      for (const [m, b] of live.minutes) if (m >= cutoff - 60e3) { ok += b.ok; failed += b.failed; retried += b.retried; }
      const card = (k, v, id) => h('div', { class: 'card', id }, h('div', { class: 'v' }, v), h('div', { class: 'k' }, k));
      fill(cards, 
        card('active nodes', nodeList.filter((n) => n.status === 'active').length, 'card-nodes'),
        card('pending', sum('pending') + sum('assigned'), 'card-pending'),
        card('running', sum('running'), 'card-running'),
        card('succeeded, last hour', ok, 'card-ok'),
        card('failed, last hour', failed, 'card-failed'),
        card('retried, last hour', retried, 'card-retried'));
    };
    const drawChart = () => { const el = document.getElementById('chart'); if (el) fill(el, throughputChart(live.minutes)); };
    const refresh = async () => {
      try {
        const [q, n] = await Promise.all([get('/v1/queues'), get('/v1/nodes')]);
        queues = q.items;
        nodeList = n.items;
      } catch (e) { flash(e.message, true); return; }
      if (!document.getElementById('depths')) return; // left the page meanwhile
      fill(document.getElementById('depths'), queueDepthTable(queues));
      const active = nodeList.filter((n) => n.status !== 'offline');
      fill(document.getElementById('active-nodes'), active.length === 0 ? h('p', { class: 'muted' }, 'No node is connected.')
        : h('table', {}, h('tr', {}, h('th', {}, 'node'), h('th', {}, 'kind'), h('th', {}, 'status'), h('th', {}, 'use'), h('th', {}, 'seen')),
          active.map((n) => h('tr', { 'data-node': n.id }, h('td', {}, n.name), h('td', {}, n.kind), h('td', {}, badge(n.status)),
            h('td', {}, useBar(n)), h('td', {}, ago(n.last_seen_at))))));
      drawCards();
    };
    every(3000, refresh);
    every(5000, () => { drawChart(); drawCards(); });
    onEvents(400, () => { refresh(); drawChart(); });
  }

  function useBar(n) {
    const pct = Math.min(100, Math.round((100 * n.running) / Math.max(1, n.capacity)));
    return h('div', { class: 'inline', title: `${n.running} of ${n.capacity}` },
      h('div', { class: 'bar', style: 'width: 80px' }, h('span', { style: `width: ${pct}%` })), `${n.running}/${n.capacity}`);
  }

  const STATE_COLORS = { blocked: '#98a2b3', scheduled: '#b0b8c4', pending: '#7a5af8', assigned: '#6e9cf0', running: '#2f6fde', retrying: '#e0a10a', succeeded: '#1f9d55', failed: '#d93b3b', cancelled: '#9aa1ab' };
  function queueDepthTable(queues) {
    if (queues.length === 0) return h('p', { class: 'muted' }, 'No queue yet: submit a task.');
    return h('table', { id: 'depth-table' },
      h('tr', {}, h('th', {}, 'queue'), STATES.map((st) => h('th', { class: 'num' }, st)), h('th', {}, '')),
      queues.map((q) => {
        const total = STATES.reduce((a, st) => a + (q.counts[st] || 0), 0) || 1;
        return h('tr', { 'data-queue': q.name },
          h('td', {}, h('a', { href: `#/tasks?queue=${encodeURIComponent(q.name)}` }, q.name), q.paused ? [' ', badge('paused')] : null),
          STATES.map((st) => h('td', { class: 'num', 'data-count': st }, q.counts[st] || 0)),
          h('td', {}, h('div', { class: 'stack' }, STATES.map((st) => (q.counts[st] ? h('span', { style: `width: ${(100 * q.counts[st]) / total}%; background: ${STATE_COLORS[st]}`, title: `${st}: ${q.counts[st]}` }) : null)))));
      }));
  }

  function throughputChart(minutes) {
    const W = 960; const H = 190; const L = 34; const B = 20; const T = 8;
    const now = Math.floor(Date.now() / 60e3) * 60e3;
    const slots = [];
    for (let i = 59; i >= 0; i--) slots.push({ t: now - i * 60e3, ...(minutes.get(now - i * 60e3) || { ok: 0, failed: 0, retried: 0 }) });
    const max = Math.max(4, ...slots.map((x) => x.ok + x.failed + x.retried));
    const nice = Math.pow(10, Math.floor(Math.log10(max)));
    const top = Math.ceil(max / nice) * nice;
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, id: 'throughput' });
    const y = (v) => H - B - ((H - B - T) * v) / top;
    for (let g = 0; g <= 4; g++) {
      const v = (top * g) / 4;
      svg.append(s('line', { class: 'grid', x1: L, x2: W, y1: y(v), y2: y(v) }));
      svg.append(s('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end' }, Number.isInteger(v) ? v : v.toFixed(1)));
    }
    const bw = (W - L) / 60;
    slots.forEach((x, i) => {
      const x0 = L + i * bw + 1;
      let base = 0;
      for (const [k, cls] of [['ok', 'ok'], ['retried', 'retry'], ['failed', 'bad']]) {
        if (!x[k]) continue;
        const r = s('rect', { class: cls, x: x0, width: Math.max(1, bw - 2), y: y(base + x[k]), height: y(base) - y(base + x[k]) });
        r.append(s('title', {}, `${new Date(x.t).toLocaleTimeString()}: ${x.ok} succeeded, ${x.retried} retried, ${x.failed} failed`));
        svg.append(r);
        base += x[k];
      }
      if (i % 10 === 0 || i === 59) svg.append(s('text', { x: i === 59 ? W : x0 + bw / 2, y: H - 5, 'text-anchor': i === 59 ? 'end' : 'middle' }, i === 59 ? 'now' : `-${59 - i} min`));
    });
    return svg;
  }

  // ---------------------------------------------------------------- Queues

  async function pageQueues() {
    const box = h('div', { class: 'panel' }, 'loading…');
    show(h('h1', {}, 'Queues'), box,
      h('p', { class: 'muted' }, can.admin() ? 'Max running and rate (tasks started per second): 0 or empty means unlimited.'
        : 'Your token may read only: pausing and settings need an admin token.'));
    const render = async () => {
      // Do not redraw under a person editing a setting.
      if (box.contains(document.activeElement) && document.activeElement.tagName === 'INPUT') return;
      const { items } = await get('/v1/queues');
      if (items.length === 0) { fill(box, h('p', { class: 'muted' }, 'No queue yet.')); return; }
      const extraKeys = [...new Set(items.flatMap((q) => Object.keys(q).filter((k) => !KNOWN_QUEUE_FIELDS.has(k))))];
      fill(box, h('table', { id: 'queue-table' },
        h('tr', {}, h('th', {}, 'queue'), STATES.map((st) => h('th', { class: 'num' }, st)), h('th', { class: 'num' }, 'oldest'),
          h('th', {}, 'weight'), h('th', {}, 'max running'), h('th', {}, 'rate / s'), h('th', {}, 'human only'),
          extraKeys.map((k) => h('th', {}, k.replace(/_/g, ' '))), can.admin() ? h('th', {}, '') : null),
        items.map((q) => queueRow(q, render, extraKeys))));
    };
    every(2000, () => render().catch((e) => flash(e.message, true)));
    onEvents(300, () => render().catch(() => {}));
  }

  const KNOWN_QUEUE_FIELDS = new Set(['name', 'paused', 'weight', 'human_only', 'counts', 'oldest_pending_age_ms', 'max_running', 'rate_limit']);
  const unlimited = (v) => (v === null || v === undefined || v === 0 ? '∞' : v);
  function queueRow(q, render, extraKeys) {
    let cells = [q.weight, unlimited(q.max_running), unlimited(q.rate_limit), q.human_only ? 'yes' : 'no'];
    let actions = null;
    if (can.admin()) {
      const w = h('input', { type: 'number', min: 1, max: 1000, class: 'w', value: q.weight, 'data-field': 'weight' });
      const mr = h('input', { type: 'number', min: 0, class: 'w', value: q.max_running || '', placeholder: '∞', 'data-field': 'max_running' });
      const rl = h('input', { type: 'number', min: 0, step: 'any', class: 'w', value: q.rate_limit || '', placeholder: '∞', 'data-field': 'rate_limit' });
      const hu = h('input', { type: 'checkbox', checked: q.human_only, 'data-field': 'human_only' });
      cells = [w, mr, rl, hu];
      const name = encodeURIComponent(q.name);
      actions = h('div', { class: 'actions nowrap' },
        q.paused ? actionButton('Resume', 'resume', async () => { await post(`/v1/queues/${name}/resume`); flash(`${q.name} resumed`); await render(); })
          : actionButton('Pause', 'pause', async () => { await post(`/v1/queues/${name}/pause`); flash(`${q.name} paused`); await render(); }),
        actionButton('Save', 'save', async () => {
          const weight = Number(w.value);
          if (!Number.isInteger(weight) || weight < 1 || weight > 1000) throw new Error('weight must be a whole number from 1 to 1000');
          const body = { weight, human_only: hu.checked };
          const maxRunning = mr.value.trim() === '' ? 0 : Number(mr.value);
          if (!Number.isInteger(maxRunning) || maxRunning < 0) throw new Error('max running must be a whole number (0: unlimited)');
          const rate = rl.value.trim() === '' ? 0 : Number(rl.value);
          if (!Number.isFinite(rate) || rate < 0) throw new Error('rate must be a number (0: unlimited)');
          // Only send the limits the server knows about (older servers refuse unknown fields).
          if ('max_running' in q) body.max_running = maxRunning;
          if ('rate_limit' in q) body.rate_limit = rate;
          await api('PUT', `/v1/queues/${name}`, body);
          document.activeElement.blur();
          flash(`${q.name} saved`);
          await render();
        }));
    }
    return h('tr', { 'data-queue': q.name },
      h('td', { class: 'nowrap' }, h('a', { href: `#/tasks?queue=${encodeURIComponent(q.name)}` }, q.name), ' ', q.paused ? badge('paused') : null),
      STATES.map((st) => h('td', { class: 'num', 'data-count': st }, q.counts[st] || 0)),
      h('td', { class: 'num' }, q.oldest_pending_age_ms === null || q.oldest_pending_age_ms === undefined ? '—' : dur(q.oldest_pending_age_ms)),
      cells.map((c) => h('td', {}, c)),
      extraKeys.map((k) => h('td', { class: 'mono' }, q[k] === undefined ? '' : JSON.stringify(q[k]))),
      actions ? h('td', {}, actions) : null);
  }

  // ---------------------------------------------------------------- Tasks

  async function pageTasks(_, params) {
    const queueSel = h('select', { id: 'f-queue' }, h('option', { value: '' }, 'any queue'));
    const stateSel = h('select', { id: 'f-state' }, h('option', { value: '' }, 'any state'), STATES.map((st) => h('option', { value: st }, st)));
    const kindIn = h('input', { id: 'f-kind', placeholder: 'kind', value: params.get('kind') || '' });
    const form = h('form', { class: 'inline panel', id: 'task-filter' }, queueSel, stateSel, kindIn, h('button', { type: 'submit' }, 'Filter'));
    const list = h('div', { class: 'panel' }, 'loading…');
    show(h('h1', {}, 'Tasks'), form, list,
      h('form', { class: 'inline panel', id: 'task-open' }, h('input', { id: 'task-id', placeholder: 'task id', size: 40 }), h('button', { type: 'submit' }, 'Open')));
    document.getElementById('task-open').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const id = document.getElementById('task-id').value.trim();
      if (id) location.hash = `#/task/${encodeURIComponent(id)}`;
    });
    get('/v1/queues').then(({ items }) => {
      for (const q of items) queueSel.append(h('option', { value: q.name }, q.name));
      queueSel.value = params.get('queue') || '';
    }).catch(() => {});
    if (params.get('queue')) queueSel.append(h('option', { value: params.get('queue') }, params.get('queue')));
    queueSel.value = params.get('queue') || '';
    stateSel.value = params.get('state') || '';
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      if (queueSel.value) p.set('queue', queueSel.value);
      if (stateSel.value) p.set('state', stateSel.value);
      if (kindIn.value.trim()) p.set('kind', kindIn.value.trim());
      location.hash = `#/tasks?${p}`;
    });
    const cursors = [];
    const load = async (cursor) => {
      const p = new URLSearchParams();
      for (const k of ['queue', 'state', 'kind']) if (params.get(k)) p.set(k, params.get(k));
      p.set('limit', '50');
      if (cursor) p.set('cursor', cursor);
      const pageData = await get(`/v1/tasks?${p}`);
      fill(list, pageData.items.length === 0 ? h('p', { class: 'muted' }, 'No task matches.')
        : h('table', { id: 'task-table' },
          h('tr', {}, ['id', 'kind', 'queue', 'state', 'priority', 'attempts', 'node', 'created', 'finished'].map((c) => h('th', {}, c))),
          pageData.items.map((t) => h('tr', { class: 'click', 'data-task': t.id, onclick: () => { location.hash = `#/task/${encodeURIComponent(t.id)}`; } },
            h('td', { class: 'mono' }, h('a', { href: `#/task/${encodeURIComponent(t.id)}` }, t.id.split('.')[0])),
            h('td', {}, t.kind), h('td', {}, t.queue), h('td', {}, badge(t.state)), h('td', { class: 'num' }, t.priority),
            h('td', { class: 'num' }, `${t.attempts}/${t.max_attempts}`), h('td', { class: 'mono' }, t.node ? t.node.slice(-8) : '—'),
            h('td', {}, ago(t.created_at)), h('td', {}, ago(t.finished_at))))),
      h('div', { class: 'inline', style: 'margin-top: 10px' },
        cursors.length ? h('button', { type: 'button', onclick: () => { cursors.pop(); load(cursors[cursors.length - 1]).catch((e) => flash(e.message, true)); } }, '← Previous') : null,
        pageData.next_cursor ? h('button', { type: 'button', id: 'next-page', onclick: () => { cursors.push(pageData.next_cursor); load(pageData.next_cursor).catch((e) => flash(e.message, true)); } }, 'Next →') : null));
    };
    await load();
  }

  async function pageTask([id]) {
    const pg = page;
    const box = h('div', {}, 'loading…');
    const history = [];
    const historyBox = h('div', { id: 'task-history' });
    show(h('p', {}, h('a', { href: '#/tasks' }, '← Tasks')), box,
      h('div', { class: 'panel' }, h('h2', {}, 'Attempts and events'), historyBox));
    let task = null;
    let shown = null; // the task as last drawn: redraw only when it changed
    const render = async () => {
      fill(historyBox, attemptsView(history));
      try {
        task = await get(`/v1/tasks/${encodeURIComponent(id)}`);
      } catch (e) {
        fill(box, h('p', { class: 'error', id: 'task-error' }, e.status === 404 ? `No task ${id} (never existed, or deleted after its retention).` : e.message));
        return;
      }
      const t = task;
      const key = JSON.stringify(t);
      if (key === shown) return;
      shown = key;
      const actions = [];
      if (!TERMINAL.has(t.state) && can.cancel()) {
        actions.push(actionButton('Cancel', 'cancel', async () => { await post(`/v1/tasks/${encodeURIComponent(t.id)}/cancel`); flash('cancelled'); await render(); }, { class: 'action danger' }));
      }
      if ((t.state === 'failed' || t.state === 'cancelled') && can.admin()) {
        actions.push(actionButton('Retry', 'retry', async () => { await post(`/v1/tasks/${encodeURIComponent(t.id)}/retry`); flash('queued again'); await render(); }));
      }
      if (TERMINAL.has(t.state) && can.admin()) {
        actions.push(actionButton('Delete', 'delete', async () => {
          if (!window.confirm(`Delete task ${t.id}?`)) return;
          await api('DELETE', `/v1/tasks/${encodeURIComponent(t.id)}`);
          flash('deleted');
          location.hash = `#/tasks?queue=${encodeURIComponent(t.queue)}`;
        }, { class: 'action danger' }));
      }
      const schema = t.result_schema ?? (t.payload && t.payload.result_schema);
      fill(box, 
        h('div', { class: 'inline', style: 'justify-content: space-between' },
          h('h1', {}, t.kind, ' ', h('span', { id: 'task-state' }, badge(t.state))), h('div', { class: 'actions' }, actions)),
        h('div', { class: 'row' },
          h('div', { class: 'grow panel' }, h('dl', { class: 'kv', id: 'task-fields' },
            kv('id', h('span', { class: 'mono' }, t.id)), kv('queue', h('a', { href: `#/tasks?queue=${encodeURIComponent(t.queue)}` }, t.queue)),
            kv('priority', t.priority), kv('attempts', `${t.attempts} of ${t.max_attempts}`), kv('node', t.node ? h('span', { class: 'mono' }, t.node) : '—'),
            kv('fence', t.fence), kv('lease TTL', dur(t.timeout_ms)), kv('requires', (t.requires || []).join(', ') || '—'),
            kv('created', ago(t.created_at)), kv('due', ago(t.run_at)), kv('started', ago(t.started_at)), kv('finished', ago(t.finished_at)),
            t.lease_expires_at ? kv('lease expires', ago(t.lease_expires_at)) : null,
            t.cancel_requested ? kv('cancel', 'requested: the node stops it at its next renewal') : null)),
          h('div', { class: 'grow' },
            h('div', { class: 'panel' }, h('h2', {}, 'Payload'), json(t.payload)),
            t.result !== null && t.result !== undefined ? h('div', { class: 'panel' }, h('h2', {}, 'Result'), h('div', { id: 'task-result' }, json(t.result))) : null,
            t.error ? h('div', { class: 'panel' }, h('h2', {}, 'Error'), h('pre', { id: 'task-errortext' }, t.error)) : null,
            t.progress !== null && t.progress !== undefined ? h('div', { class: 'panel' }, h('h2', {}, 'Progress'), json(t.progress)) : null,
            schema ? h('div', { class: 'panel' }, h('h2', {}, 'Result schema'), json(schema)) : null)));
    };
    await render();
    if (!task) return;
    // The task's history, replayed from its queue's capped event stream, then live.
    const created = Date.parse(task.created_at) || Date.now();
    const ctl = new AbortController();
    pg.cleanups.push(() => ctl.abort());
    if (pg !== page) ctl.abort();
    let due = null;
    readSse(`/v1/events?task=${encodeURIComponent(task.id)}`, `${Math.max(0, created - 1000)}-0@${task.queue}`, (m) => {
      try { history.push(JSON.parse(m.data)); } catch { return; }
      if (!due) due = setTimeout(() => { due = null; render(); }, 250);
    }, ctl.signal).catch(() => {});
    pg.cleanups.push(() => clearTimeout(due));
  }
  const kv = (k, v) => [h('dt', {}, k), h('dd', {}, v)];

  function attemptsView(events) {
    if (events.length === 0) return h('p', { class: 'muted' }, 'No event in the stream (it keeps the last 10,000 per queue).');
    const attempts = [];
    let cur = null;
    for (const e of events) {
      if (e.type === 'task.running') { cur = { node: e.node, start: e.ts, end: null, outcome: 'running' }; attempts.push(cur); } else if (cur && ['task.succeeded', 'task.failed', 'task.retrying', 'task.cancelled', 'task.pending'].includes(e.type)) {
        cur.end = e.ts; cur.outcome = e.type.slice(5); cur = null;
      }
    }
    return h('div', { class: 'row' },
      h('div', { class: 'grow' }, h('table', { id: 'attempts' }, h('tr', {}, h('th', {}, '#'), h('th', {}, 'node'), h('th', {}, 'started'), h('th', {}, 'ran'), h('th', {}, 'outcome')),
        attempts.map((a, i) => h('tr', {}, h('td', {}, i + 1), h('td', { class: 'mono' }, a.node || '—'), h('td', {}, new Date(a.start).toLocaleTimeString()),
          h('td', {}, a.end ? dur(a.end - a.start) : '…'), h('td', {}, badge(a.outcome)))))),
      h('div', { class: 'grow' }, h('table', {}, h('tr', {}, h('th', {}, 'time'), h('th', {}, 'event'), h('th', {}, 'node')),
        events.slice(-50).map((e) => h('tr', {}, h('td', {}, new Date(e.ts).toLocaleTimeString()), h('td', {}, e.type), h('td', { class: 'mono' }, e.node ? e.node.slice(-8) : ''))))));
  }

  // ---------------------------------------------------------------- Nodes

  async function pageNodes() {
    const box = h('div', { class: 'panel' }, 'loading…');
    show(h('h1', {}, 'Nodes'), box);
    const render = async () => {
      const { items } = await get('/v1/nodes');
      if (items.length === 0) { fill(box, h('p', { class: 'muted' }, 'No node registered.')); return; }
      fill(box, h('table', { id: 'node-table' },
        h('tr', {}, ['name', 'kind', 'status', 'use', 'queues', 'tags', 'succeeded', 'failed', 'mean run', 'last heartbeat'].map((c) => h('th', {}, c)), can.admin() ? h('th', {}, 'actions') : null),
        items.map((n) => h('tr', { 'data-node': n.id },
          h('td', {}, n.name, h('div', { class: 'mono muted' }, n.id)), h('td', {}, n.kind), h('td', { 'data-field': 'status' }, badge(n.status)),
          h('td', {}, useBar(n)), h('td', {}, n.queues.join(', ')), h('td', {}, n.tags.join(', ') || '—'),
          h('td', { class: 'num' }, n.succeeded), h('td', { class: 'num' }, n.failed),
          h('td', { class: 'num' }, n.mean_run_ms === null || n.mean_run_ms === undefined ? '—' : dur(n.mean_run_ms)), h('td', {}, ago(n.last_seen_at)),
          can.admin() ? h('td', {}, h('div', { class: 'actions' },
            n.status !== 'draining' ? actionButton('Drain', 'drain', async () => { await post(`/v1/nodes/${n.id}/drain`); flash(`${n.name} draining`); await render(); }) : null,
            actionButton('Remove', 'remove', async () => {
              if (!window.confirm(`Remove node ${n.name}? Its queued tasks go back to pending.`)) return;
              await api('DELETE', `/v1/nodes/${n.id}`);
              flash(`${n.name} removed`);
              await render();
            }, { class: 'action danger' }))) : null))));
    };
    every(2000, () => render().catch((e) => flash(e.message, true)));
  }

  // ---------------------------------------------------------------- Schedules and batches

  // Last fires: [{tick_at, fired_at, outcome, task_id, error}], newest last.
  function fires(list) {
    if (!Array.isArray(list) || list.length === 0) return h('span', { class: 'muted' }, 'none yet');
    return h('div', {}, list.slice(-3).reverse().map((f) => h('div', { class: 'nowrap' }, badge(f.outcome || '?'), ' ', ago(f.tick_at || f.fired_at), ' ',
      f.task_id ? h('a', { class: 'mono', href: `#/task/${encodeURIComponent(f.task_id)}` }, f.task_id.split('.')[0].slice(-8)) : null,
      f.error ? h('span', { class: 'error' }, ` ${f.error}`) : null)));
  }
  const notAvailable = (what, status) => h('p', { class: 'notice', id: 'not-available' }, `${what} are not available on this server (it answered ${status}).`);

  async function pageSchedules() {
    const box = h('div', { class: 'panel' }, 'loading…');
    show(h('h1', {}, 'Schedules'), box);
    const render = async () => {
      let data;
      try {
        data = await get('/v1/schedules');
      } catch (e) {
        if (e.status === 404 || e.status === 405) { fill(box, notAvailable('Schedules', e.status)); return; }
        throw e;
      }
      const items = data.items || [];
      if (items.length === 0) { fill(box, h('p', { class: 'muted' }, 'No schedule. Create one with POST /v1/schedules.')); return; }
      fill(box, h('table', { id: 'schedule-table' },
        h('tr', {}, ['name', 'cron', 'timezone', 'state', 'next fire', 'fired', 'skipped', 'missed', 'last fires'].map((c) => h('th', {}, c)), can.admin() ? h('th', {}, '') : null),
        items.map((sc) => h('tr', { 'data-schedule': sc.name },
          h('td', {}, h('a', { href: `#/schedule/${encodeURIComponent(sc.name)}` }, sc.name)), h('td', { class: 'mono' }, sc.cron), h('td', {}, sc.timezone),
          h('td', {}, badge(sc.paused ? 'paused' : 'active')), h('td', {}, sc.paused ? '—' : ago(sc.next_fire_at)),
          h('td', { class: 'num' }, sc.fired ?? 0), h('td', { class: 'num' }, sc.skipped ?? 0), h('td', { class: 'num' }, sc.missed ?? 0),
          h('td', {}, fires(sc.last_fires)),
          can.admin() ? h('td', {}, h('div', { class: 'actions nowrap' },
            sc.paused ? actionButton('Resume', 'resume', async () => { await post(`/v1/schedules/${encodeURIComponent(sc.name)}/resume`); await render(); })
              : actionButton('Pause', 'pause', async () => { await post(`/v1/schedules/${encodeURIComponent(sc.name)}/pause`); await render(); }))) : null))));
    };
    every(5000, () => render().catch((e) => flash(e.message, true)));
  }

  async function pageSchedule([name]) {
    show(h('p', {}, h('a', { href: '#/schedules' }, '← Schedules')), h('h1', {}, name));
    const box = h('div', {}, 'loading…');
    show(box);
    const render = async () => {
      let sc;
      try { sc = await get(`/v1/schedules/${encodeURIComponent(name)}`); } catch (e) {
        fill(box, e.status === 404 ? h('p', { class: 'notice', id: 'not-available' }, 'No such schedule, or schedules are not available on this server.') : h('p', { class: 'error' }, e.message));
        return;
      }
      fill(box, h('div', { class: 'row' },
        h('div', { class: 'grow panel' }, h('dl', { class: 'kv' },
          kv('cron', h('span', { class: 'mono' }, sc.cron)), kv('timezone', sc.timezone), kv('state', badge(sc.paused ? 'paused' : 'active')),
          kv('overlap', sc.overlap), kv('catch up', sc.catch_up), kv('next fire', sc.paused ? '—' : ago(sc.next_fire_at)),
          kv('fired / skipped / missed', `${sc.fired ?? 0} / ${sc.skipped ?? 0} / ${sc.missed ?? 0}`), kv('created', ago(sc.created_at)))),
        h('div', { class: 'grow panel' }, h('h2', {}, 'Task it submits'), json(sc.task))),
      h('div', { class: 'panel' }, h('h2', {}, 'Last fires'), (sc.last_fires || []).length === 0 ? h('p', { class: 'muted' }, 'none yet')
        : h('table', {}, h('tr', {}, ['tick', 'decided', 'outcome', 'task', 'error'].map((c) => h('th', {}, c))),
          sc.last_fires.slice().reverse().map((f) => h('tr', {}, h('td', {}, ago(f.tick_at)), h('td', {}, ago(f.fired_at)), h('td', {}, badge(f.outcome)),
            h('td', { class: 'mono' }, f.task_id ? h('a', { href: `#/task/${encodeURIComponent(f.task_id)}` }, f.task_id) : '—'), h('td', {}, f.error || ''))))));
    };
    every(5000, () => render().catch((e) => flash(e.message, true)));
  }

  function batchForm(value) {
    const input = h('input', { id: 'batch-id', placeholder: 'batch id', size: 40, value: value || '' });
    const form = h('form', { class: 'inline panel', id: 'batch-open' }, input, h('button', { type: 'submit' }, 'Open'));
    form.addEventListener('submit', (ev) => { ev.preventDefault(); if (input.value.trim()) location.hash = `#/batch/${encodeURIComponent(input.value.trim())}`; });
    return form;
  }
  async function pageBatches() {
    show(h('h1', {}, 'Batches'), h('p', { class: 'muted' }, 'Look a batch up by the id POST /v1/batches answered.'), batchForm());
  }
  async function pageBatch([id]) {
    const box = h('div', { class: 'panel' }, 'loading…');
    const results = h('div', { class: 'panel' });
    show(h('p', {}, h('a', { href: '#/batches' }, '← Batches')), h('h1', {}, 'Batch ', h('span', { class: 'mono' }, id)), box, results);
    let done = false;
    const render = async () => {
      if (done) return;
      let b;
      try { b = await get(`/v1/batches/${encodeURIComponent(id)}`); } catch (e) {
        fill(box, e.status === 404 || e.status === 405 ? h('p', { class: 'notice', id: 'not-available' }, `No batch ${id} (or batches are not available on this server).`) : h('p', { class: 'error' }, e.message));
        results.hidden = true;
        return;
      }
      const counts = { succeeded: b.succeeded || 0, failed: b.failed || 0, cancelled: b.cancelled || 0, unfinished: b.unfinished || 0 };
      const colors = { succeeded: STATE_COLORS.succeeded, failed: STATE_COLORS.failed, cancelled: STATE_COLORS.cancelled, unfinished: STATE_COLORS.pending };
      const total = b.total || 0;
      fill(box, h('dl', { class: 'kv', id: 'batch-fields' },
        kv('state', h('span', { id: 'batch-state' }, badge(b.state))), kv('total', total),
        kv('finished', `${total - counts.unfinished} of ${total}`),
        kv('progress', h('div', { class: 'stack', style: 'width: 360px' }, Object.keys(counts).map((k) => (counts[k] ? h('span', { style: `width: ${(100 * counts[k]) / Math.max(1, total)}%; background: ${colors[k]}`, title: `${k}: ${counts[k]}` }) : null)))),
        kv('counts', h('div', {}, Object.entries(counts).map(([k, v]) => h('span', { style: 'margin-right: 12px' }, badge(k), ' ', h('span', { 'data-count': k }, v))))),
        kv('open', b.open ? 'yes: children may still be added' : 'no'),
        kv('then', b.then_task ? h('a', { class: 'mono', href: `#/task/${encodeURIComponent(b.then_task)}` }, b.then_task) : '—'),
        kv('created', ago(b.created_at)), kv('finished at', ago(b.finished_at))));
      const page1 = await get(`/v1/batches/${encodeURIComponent(id)}/results`).catch(() => null);
      if (page1) {
        fill(results, h('h2', {}, 'Children'), h('table', {}, h('tr', {}, ['task', 'state', 'result or error'].map((c) => h('th', {}, c))),
          page1.items.slice(0, 100).map((r) => h('tr', {}, h('td', { class: 'mono' }, h('a', { href: `#/task/${encodeURIComponent(r.id)}` }, r.id)),
            h('td', {}, r.state ? badge(r.state) : h('span', { class: 'muted' }, 'gone')),
            h('td', { class: 'mono' }, r.error ? h('span', { class: 'error' }, r.error) : r.result === null || r.result === undefined ? '' : JSON.stringify(r.result).slice(0, 200))))),
        page1.items.length > 100 || page1.next_cursor ? h('p', { class: 'muted' }, 'First children only: page through GET /v1/batches/{id}/results for the rest.') : null);
      }
      done = b.state !== 'running' && !b.open;
    };
    every(2000, () => render().catch((e) => flash(e.message, true)));
  }

  // ---------------------------------------------------------------- Human workbench

  // A person is a node of kind "human": registered with the console token, it then
  // works with its own node token (lease max 1, extend while the page is open,
  // complete or fail), exactly as any HTTP client could.
  const human = {
    get rec() { try { return JSON.parse(store.getItem(K.human)); } catch { return null; } },
    set rec(v) { if (v) store.setItem(K.human, JSON.stringify(v)); else store.removeItem(K.human); },
    get lease() { try { return JSON.parse(store.getItem(K.lease)); } catch { return null; } },
    set lease(v) { if (v) store.setItem(K.lease, JSON.stringify(v)); else store.removeItem(K.lease); },
    as(method, path, body, signal) { return call(this.rec.token, method, path, body, signal).then((r) => r.data); },
  };

  async function pageWork() {
    const side = h('div', { class: 'panel', id: 'wb-side' });
    const content = h('div', { class: 'content', id: 'wb-content' });
    show(h('h1', {}, 'Workbench'), h('div', { class: 'wb' }, side, content));
    if (!can.register()) {
      side.append(h('p', { class: 'notice', id: 'wb-denied' }, `A ${session.role} token may not register a person as a node: sign in with an admin or agent token.`));
      return;
    }
    let waiting = null; // AbortController of the lease long-poll
    let extendTimer = null;
    let beatTimer = null;
    page.cleanups.push(() => { if (waiting) waiting.abort(); clearInterval(extendTimer); clearInterval(beatTimer); });

    const stopWaiting = () => { if (waiting) { waiting.abort(); waiting = null; } };

    const drawSide = async () => {
      const rec = human.rec;
      fill(side, );
      if (rec) {
        side.append(h('h2', {}, 'You are working as'), h('p', { id: 'wb-me' }, h('b', {}, rec.name), h('br'), h('span', { class: 'mono muted' }, rec.id)),
          h('p', {}, 'Queues: ', rec.queues.join(', ')),
          h('label', {}, h('input', { type: 'checkbox', id: 'wb-auto', checked: store.getItem('muster.auto') !== '0', onchange: (e) => store.setItem('muster.auto', e.target.checked ? '1' : '0') }), 'claim the next task after each submit'),
          h('p', { class: 'muted' }, h('span', { class: 'kbd' }, 'Ctrl'), '+', h('span', { class: 'kbd' }, 'Enter'), ' submits the result.'),
          h('div', { class: 'actions' }, h('button', { type: 'button', id: 'wb-stop', onclick: act(null, stopWork) }, 'Stop working')));
        return;
      }
      let queues = [];
      let canList = true;
      try { queues = (await get('/v1/queues')).items.filter((q) => q.human_only); } catch (e) { if (e.status === 403) canList = false; else throw e; }
      const name = h('input', { id: 'wb-name', placeholder: 'your name', value: store.getItem(K.name) || '' });
      const qbox = h('div', { class: 'queues', id: 'wb-queues' });
      if (canList) {
        if (queues.length === 0) qbox.append(h('p', { class: 'muted' }, 'No human-only queue yet: an admin marks one with PUT /v1/queues/{name} {"human_only": true}.'));
        for (const q of queues) qbox.append(h('label', {}, h('input', { type: 'checkbox', value: q.name, checked: queues.length === 1, 'data-queue': q.name }), q.name, h('span', { class: 'muted' }, ` (${q.counts.pending} waiting)`)));
      } else {
        qbox.append(h('input', { id: 'wb-queue-names', placeholder: 'queues, comma-separated' }));
      }
      const start = h('button', { class: 'primary', type: 'submit', id: 'wb-start' }, 'Start working');
      const form = h('form', {}, h('h2', {}, 'Human queues'), qbox, h('p', {}, name), start);
      form.addEventListener('submit', act(start, async () => {
        const chosen = canList ? [...qbox.querySelectorAll('input:checked')].map((i) => i.value)
          : document.getElementById('wb-queue-names').value.split(',').map((x) => x.trim()).filter(Boolean);
        if (chosen.length === 0) throw new Error('choose at least one queue');
        const who = name.value.trim() || 'annotator';
        store.setItem(K.name, who);
        const reg = await api('POST', '/v1/nodes', { name: who, kind: 'human', queues: chosen, capacity: 1 });
        human.rec = { id: reg.id, token: reg.token, name: who, queues: chosen, hb: reg.heartbeat_interval_ms || 5000 };
        flash(`registered as node ${reg.id}`);
        await begin();
      }));
      side.append(form);
    };

    const heartbeat = async () => {
      const rec = human.rec;
      if (!rec) return;
      try {
        await human.as('POST', `/v1/nodes/${rec.id}/heartbeat`);
      } catch (e) {
        if (e.status === 404 || e.status === 401) { human.rec = null; human.lease = null; flash('Your node was removed: start again.', true); await begin(); }
      }
    };

    async function begin() {
      clearInterval(beatTimer);
      await drawSide();
      const rec = human.rec;
      if (!rec) { fill(content, h('div', { class: 'panel muted' }, 'Choose the queues you work on, then start.')); return; }
      beatTimer = setInterval(heartbeat, Math.max(500, rec.hb));
      await heartbeat();
      if (!human.rec) return;
      const l = human.lease;
      if (l) {
        // Back on the page with a claimed task: keep it if the lease is still ours.
        try {
          await human.as('POST', `/v1/tasks/${encodeURIComponent(l.task.id)}/extend`, { lease_token: l.lease_token });
          showTask(l);
          return;
        } catch { human.lease = null; }
      }
      showIdle();
    }

    async function stopWork() {
      stopWaiting();
      clearInterval(extendTimer);
      const rec = human.rec;
      if (!rec) return;
      if (human.lease) await handBack(true);
      try { await human.as('DELETE', `/v1/nodes/${rec.id}`); } catch { /* gone already */ }
      human.rec = null;
      await begin();
    }

    function showIdle(msg) {
      clearInterval(extendTimer);
      const claim = h('button', { class: 'primary', type: 'button', id: 'wb-claim' }, 'Claim next task');
      const status = h('p', { class: 'muted', id: 'wb-status' }, msg || 'No task claimed.');
      fill(content, h('div', { class: 'panel' }, status, claim));
      claim.addEventListener('click', () => {
        if (waiting) { stopWaiting(); claim.textContent = 'Claim next task'; status.textContent = 'Stopped waiting.'; return; }
        claim.textContent = 'Stop waiting';
        status.textContent = 'Waiting for a task…';
        claimLoop().catch((e) => { status.textContent = e.message; claim.textContent = 'Claim next task'; });
      });
      return claim;
    }

    async function claimLoop() {
      const rec = human.rec;
      waiting = new AbortController();
      const signal = waiting.signal;
      while (!signal.aborted) {
        let reply;
        try {
          reply = await human.as('POST', `/v1/nodes/${rec.id}/lease`, { max: 1, wait_ms: 20000 }, signal);
        } catch (e) {
          if (signal.aborted) return;
          if (e.status === 404) { human.rec = null; await begin(); return; }
          throw e;
        }
        if (reply.leases && reply.leases.length) {
          waiting = null;
          const l = reply.leases[0];
          human.lease = { task: l.task, lease_token: l.lease_token, lease_expires_at: l.lease_expires_at };
          showTask(human.lease);
          return;
        }
      }
    }

    async function handBack(quiet) {
      const l = human.lease;
      if (!l) return;
      clearInterval(extendTimer);
      try {
        await human.as('POST', `/v1/tasks/${encodeURIComponent(l.task.id)}/fail`, { lease_token: l.lease_token, error: 'handed back', retryable: true });
        if (!quiet) flash('Handed back: the task returns to its queue.');
      } catch (e) { if (!quiet) flash(e.message, true); }
      human.lease = null;
    }

    function showTask(l) {
      const t = l.task;
      const p = t.payload && typeof t.payload === 'object' ? t.payload : {};
      const view = [];
      if (typeof p.text === 'string') view.push(h('div', { class: 'text', id: 'wb-text' }, p.text));
      if (typeof p.image_url === 'string' && /^(https?:|data:image\/|\/)/i.test(p.image_url)) view.push(h('img', { class: 'subject', id: 'wb-image', src: p.image_url, alt: 'task image', referrerpolicy: 'no-referrer' }));
      if (typeof p.html === 'string') {
        // sandbox="" : no scripts, no forms, no navigation, a unique origin.
        const f = h('iframe', { class: 'subject', id: 'wb-html', sandbox: '', title: 'task content' });
        f.srcdoc = p.html;
        view.push(f);
      }
      if (typeof p.text !== 'string' && typeof p.image_url !== 'string' && typeof p.html !== 'string') view.push(json(t.payload));
      const schema = t.result_schema ?? p.result_schema ?? null;
      const form = h('form', { class: 'result', id: 'wb-form' });
      const fields = resultFields(schema, form);
      const submit = h('button', { class: 'primary', type: 'submit', id: 'wb-submit' }, 'Submit result');
      const back = h('button', { type: 'button', id: 'wb-handback' }, 'Hand back');
      const leaseInfo = h('span', { class: 'muted', id: 'wb-lease' });
      form.append(h('div', { class: 'actions' }, submit, back, leaseInfo));
      const err = h('p', { class: 'error', id: 'wb-error' });
      fill(content, 
        h('div', { class: 'panel', id: 'wb-task', 'data-task': t.id },
          h('div', { class: 'inline', style: 'justify-content: space-between' }, h('h2', {}, t.kind), h('span', { class: 'mono muted' }, t.id)),
          h('p', { class: 'muted' }, `queue ${t.queue} · attempt ${t.attempts} of ${t.max_attempts}`),
          view, h('details', {}, h('summary', {}, 'payload'), json(t.payload))),
        h('div', { class: 'panel' }, h('h2', {}, 'Your answer'), form, err,
          h('p', { class: 'muted' }, 'Hand back returns the task to its queue as a failed attempt: it waits out its retry backoff and uses one of its attempts.')));
      const first = form.querySelector('input, select, textarea');
      if (first) first.focus();

      const showLease = (iso) => { leaseInfo.textContent = iso ? `lease until ${new Date(iso).toLocaleTimeString()}` : ''; };
      showLease(l.lease_expires_at);
      // Keep the lease alive at a third of its TTL while the page is open.
      clearInterval(extendTimer);
      extendTimer = setInterval(async () => {
        try {
          const r = await human.as('POST', `/v1/tasks/${encodeURIComponent(t.id)}/extend`, { lease_token: l.lease_token });
          showLease(r.lease_expires_at);
          if (r.cancel_requested) {
            clearInterval(extendTimer);
            await human.as('POST', `/v1/tasks/${encodeURIComponent(t.id)}/fail`, { lease_token: l.lease_token, error: 'cancelled', retryable: false }).catch(() => {});
            human.lease = null;
            showIdle('That task was cancelled by an operator.');
          }
        } catch (e) {
          if (e.status === 409 || e.status === 404) {
            clearInterval(extendTimer);
            human.lease = null;
            showIdle('The lease on that task was lost (it expired or the task moved on).');
          }
        }
      }, Math.max(1000, Math.floor((t.timeout_ms || 30000) / 3)));

      const doSubmit = act(submit, async () => {
        err.textContent = '';
        let result;
        try { result = fields.read(); } catch (e) { err.textContent = e.message; return; }
        try {
          await human.as('POST', `/v1/tasks/${encodeURIComponent(t.id)}/complete`, { lease_token: l.lease_token, result });
        } catch (e) {
          if (e.status === 409) { human.lease = null; showIdle('Too late: the lease on that task was lost, your answer was not recorded.'); return; }
          throw e;
        }
        clearInterval(extendTimer);
        human.lease = null;
        flash('Result recorded.');
        const claim = showIdle(`Submitted ${t.id}.`);
        const auto = document.getElementById('wb-auto');
        if (auto && auto.checked) claim.click();
      });
      form.addEventListener('submit', doSubmit);
      back.addEventListener('click', act(back, async () => { await handBack(false); showIdle('Handed back.'); }));
    }

    const onKey = (ev) => {
      if ((ev.ctrlKey || ev.metaKey) && ev.key === 'Enter') {
        const f = document.getElementById('wb-form');
        if (f) { ev.preventDefault(); f.requestSubmit(); }
      }
    };
    document.addEventListener('keydown', onKey);
    page.cleanups.push(() => document.removeEventListener('keydown', onKey));
    await begin();
  }

  // A form from a JSON Schema subset: an object whose properties are string, number,
  // integer, boolean or enum; anything else falls back to a JSON text area.
  function resultFields(schema, form) {
    const props = schema && schema.type === 'object' && schema.properties && typeof schema.properties === 'object' ? schema.properties : null;
    const simple = props && Object.values(props).every((p) => p && (Array.isArray(p.enum) || ['string', 'number', 'integer', 'boolean'].includes(p.type)));
    if (!simple) {
      const ta = h('textarea', { id: 'wb-json', spellcheck: 'false' }, '{}');
      form.append(h('div', { class: 'field' }, h('span', {}, 'Result (JSON)'), ta));
      return { read: () => { try { return JSON.parse(ta.value); } catch (e) { throw new Error(`the result is not JSON: ${e.message}`); } } };
    }
    const required = new Set(Array.isArray(schema.required) ? schema.required : []);
    const readers = [];
    // JSON objects lose their key order on the way through the API (keys come back
    // sorted), so required fields come first, then `propertyOrder` / `x-order`.
    const rank = ([k, p]) => [required.has(k) ? 0 : 1, Number(p.propertyOrder ?? p['x-order'] ?? 1e9)];
    const entries = Object.entries(props).sort((a, b) => {
      const [ra, rb] = [rank(a), rank(b)];
      return ra[0] - rb[0] || ra[1] - rb[1];
    });
    for (const [key, p] of entries) {
      const id = `wb-f-${key}`;
      const label = (p.title || key) + (required.has(key) ? ' *' : '');
      let input;
      let read;
      if (Array.isArray(p.enum)) {
        input = h('select', { id, name: key }, required.has(key) ? null : h('option', { value: '' }, '—'), p.enum.map((v, i) => h('option', { value: String(i) }, String(v))));
        if (required.has(key) && p.default === undefined) input.prepend(h('option', { value: '', selected: true, disabled: true }, 'choose…'));
        if (p.default !== undefined) input.value = String(p.enum.indexOf(p.default));
        read = () => (input.value === '' ? undefined : p.enum[Number(input.value)]);
      } else if (p.type === 'boolean') {
        input = h('input', { id, name: key, type: 'checkbox', checked: p.default === true });
        read = () => input.checked;
      } else if (p.type === 'number' || p.type === 'integer') {
        input = h('input', { id, name: key, type: 'number', step: p.type === 'integer' ? '1' : 'any', min: p.minimum, max: p.maximum, value: p.default });
        read = () => {
          if (input.value.trim() === '') return undefined;
          const v = Number(input.value);
          if (!Number.isFinite(v) || (p.type === 'integer' && !Number.isInteger(v))) throw new Error(`${p.title || key} must be ${p.type === 'integer' ? 'a whole number' : 'a number'}`);
          if (p.minimum !== undefined && v < p.minimum) throw new Error(`${p.title || key} must be at least ${p.minimum}`);
          if (p.maximum !== undefined && v > p.maximum) throw new Error(`${p.title || key} must be at most ${p.maximum}`);
          return v;
        };
      } else {
        const long = (p.maxLength || 0) > 200 || p.format === 'textarea';
        input = long ? h('textarea', { id, name: key, maxlength: p.maxLength }, p.default || '') : h('input', { id, name: key, type: 'text', maxlength: p.maxLength, value: p.default });
        read = () => (input.value === '' ? undefined : input.value);
      }
      form.append(p.type === 'boolean' && !Array.isArray(p.enum)
        ? h('div', { class: 'field' }, h('label', {}, input, label), p.description ? h('small', {}, p.description) : null)
        : h('div', { class: 'field' }, h('span', {}, label), input, p.description ? h('small', {}, p.description) : null));
      readers.push([key, read, label]);
    }
    return {
      read: () => {
        const out = {};
        for (const [key, read] of readers) {
          const v = read();
          if (v === undefined) {
            if (required.has(key)) throw new Error(`${props[key].title || key} is required`);
          } else out[key] = v;
        }
        return out;
      },
    };
  }

  // ---------------------------------------------------------------- start

  document.getElementById('signout').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', route);
  if (session.token && can.read()) live.start();
  route();
})();
