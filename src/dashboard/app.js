// taskstream dashboard: one page over the REST API (/api/v1), vanilla JavaScript.
//
// Rules this file keeps:
// - Text from the API reaches the DOM only through textContent / text nodes / attribute
//   values set with setAttribute (never as markup).
// - A read token's page never gets a mutating button: they are created only when
//   whoami says the role is admin, and every view is rebuilt on sign-in and sign-out.
// - Live figures come from polling GET /api/v1/queues every POLL_MS; rates are deltas of
//   the completion counters between two polls. Nothing here invents a number the API
//   does not give (wait-time percentiles live in Prometheus).
'use strict';

(function () {
  const POLL_MS = 1500;
  const KEEP_MS = 5 * 60 * 1000;
  const TOKEN_KEY = 'taskstream.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const FINAL_SAGA = ['completed', 'rolled_back', 'failed'];
  const DL_PAGE = 100;
  const DL_WANT = 50;
  const DL_MAX_REQUESTS = 30;

  const S = {
    token: '',
    name: '',
    role: null,
    timer: null,
    generation: 0,
    cards: new Map(),
    history: new Map(),
    queueNames: [],
    dl: null,
    sagaCursor: null,
    sagaOpen: null,
    confirmResolve: null,
  };

  const $ = (id) => document.getElementById(id);

  // ----- DOM helpers -------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    setAttrs(e, attrs);
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function setAttrs(e, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') e.textContent = String(v);
      else if (k === 'onclick') e.addEventListener('click', v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function isAdmin() {
    return S.role === 'admin';
  }

  // A button that changes something; only ever created for an admin token.
  function mutButton(label, action, handler, cls) {
    if (!isAdmin()) return null;
    return el('button', {
      type: 'button',
      class: 'mut ' + (cls || ''),
      'data-mutating': 'true',
      'data-action': action,
      onclick: handler,
    }, label);
  }

  function fmtNum(n) {
    if (n === null || n === undefined) return '–';
    return Number(n).toLocaleString('en-US');
  }

  function fmtRate(r) {
    if (r === null || r === undefined || !isFinite(r)) return '–';
    if (r >= 100) return r.toFixed(0);
    if (r >= 10) return r.toFixed(1);
    return r.toFixed(2);
  }

  function fmtSecs(s) {
    if (s === null || s === undefined || !isFinite(s)) return '–';
    if (s < 1) return (s * 1000).toFixed(0) + ' ms';
    if (s < 120) return s.toFixed(1) + ' s';
    if (s < 7200) return (s / 60).toFixed(1) + ' min';
    if (s < 172800) return (s / 3600).toFixed(1) + ' h';
    return (s / 86400).toFixed(1) + ' d';
  }

  function fmtTime(ms) {
    if (!ms) return '–';
    const d = new Date(Number(ms));
    return d.toLocaleString('sv-SE', { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  }

  function ago(ms) {
    if (!ms) return '–';
    return fmtSecs(Math.max(0, (Date.now() - Number(ms)) / 1000)) + ' ago';
  }

  function setStatus(text, isError) {
    const s = $('status');
    s.textContent = text;
    s.className = isError ? 'error' : '';
  }

  // ----- API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (S.token) headers.Authorization = 'Bearer ' + S.token;
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch('/api/v1' + path, init);
    } catch (e) {
      throw new ApiError(0, 'the server cannot be reached (' + e.message + ')');
    }
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    if (!r.ok) {
      const msg = (data && (data.detail || data.title)) || 'HTTP ' + r.status;
      throw new ApiError(r.status, msg);
    }
    return data;
  }

  function qs(params) {
    const parts = [];
    for (const [k, v] of Object.entries(params)) {
      if (v === null || v === undefined || v === '') continue;
      parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(String(v)));
    }
    return parts.length ? '?' + parts.join('&') : '';
  }

  const enc = encodeURIComponent;

  // ----- sign in / out -----------------------------------------------------------------

  async function signIn(token) {
    S.token = token;
    const me = await api('GET', '/whoami');
    S.name = me.name;
    S.role = me.role;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    showApp(me);
  }

  function resetViews() {
    S.generation += 1;
    if (S.timer) clearTimeout(S.timer);
    S.timer = null;
    S.cards.clear();
    S.history.clear();
    S.dl = null;
    S.sagaOpen = null;
    S.sagaCursor = null;
    $('queues').replaceChildren();
    $('dl-bulk').replaceChildren();
    $('dl-results').replaceChildren();
    $('dl-summary').textContent = '';
    $('dl-more').hidden = true;
    $('saga-list').replaceChildren();
    $('saga-detail').replaceChildren();
    $('saga-more').hidden = true;
    $('schedules').replaceChildren();
    $('no-schedules').hidden = true;
    closeConfirm(false);
  }

  function signOut(message) {
    resetViews();
    S.token = '';
    S.role = null;
    S.name = '';
    sessionStorage.removeItem(TOKEN_KEY);
    // The next person at this browser starts from empty forms.
    $('dl-form').reset();
    $('saga-form').reset();
    $('tabs').hidden = true;
    $('who').hidden = true;
    for (const v of document.querySelectorAll('.view')) v.hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('token').value = '';
    $('token').focus();
    setStatus('', false);
  }

  function showApp(me) {
    resetViews();
    $('login').hidden = true;
    $('tabs').hidden = false;
    $('who').hidden = false;
    $('who-name').textContent = me.name;
    $('who-role').textContent = me.role;
    $('who-role').className = 'badge role-' + me.role;
    $('logout').hidden = !!me.open;
    document.body.setAttribute('data-role', me.role);
    buildBulkButtons();
    showTab();
    poll(S.generation);
  }

  // ----- tabs --------------------------------------------------------------------------

  function currentTab() {
    const h = location.hash.replace(/^#/, '');
    return ['queues', 'dead-letters', 'sagas', 'schedules'].includes(h) ? h : 'queues';
  }

  function showTab() {
    if (!S.role) return;
    const tab = currentTab();
    for (const a of document.querySelectorAll('#tabs a')) {
      a.classList.toggle('active', a.getAttribute('data-tab') === tab);
    }
    $('view-queues').hidden = tab !== 'queues';
    $('view-dead-letters').hidden = tab !== 'dead-letters';
    $('view-sagas').hidden = tab !== 'sagas';
    $('view-schedules').hidden = tab !== 'schedules';
    if (tab === 'sagas' && !$('saga-list').hasChildNodes()) loadSagas(false);
    if (tab === 'schedules') loadSchedules(S.generation).catch((e) => setStatus('schedules: ' + e.message, true));
  }

  // ----- polling -----------------------------------------------------------------------

  async function poll(gen) {
    if (gen !== S.generation) return;
    try {
      const queues = [];
      let cursor = null;
      for (let i = 0; i < 20; i++) {
        const page = await api('GET', '/queues' + qs({ cursor, limit: 1000 }));
        queues.push(...page.queues);
        cursor = page.next_cursor;
        if (!cursor) break;
      }
      if (gen !== S.generation) return;
      renderQueues(queues, Date.now());
      await refreshOpenWorkers(gen);
      if (currentTab() === 'sagas' && S.sagaOpen) await openSaga(S.sagaOpen, true);
      if (currentTab() === 'schedules') await loadSchedules(gen);
      setStatus('live · updated ' + new Date().toLocaleTimeString('en-GB'), false);
    } catch (e) {
      if (gen !== S.generation) return;
      if (e.status === 401) {
        signOut('The token was refused: ' + e.message);
        return;
      }
      setStatus('update failed: ' + e.message + ' (retrying)', true);
    }
    if (gen === S.generation) S.timer = setTimeout(() => poll(gen), POLL_MS);
  }

  // ----- queues ------------------------------------------------------------------------

  const FIELDS = [
    ['bulk_length', 'Bulk'],
    ['express_length', 'Express'],
    ['scheduled', 'Scheduled'],
    ['dead_letters', 'Dead letters'],
    ['pending', 'Pending'],
    ['lag', 'Lag'],
    ['live_workers', 'Live workers'],
    ['oldest_bulk_age_seconds', 'Oldest bulk'],
    ['oldest_express_age_seconds', 'Oldest express'],
    ['done', 'Done (total)'],
    ['retried', 'Retried (total)'],
    ['dead', 'Dead (total)'],
  ];

  function figures(q) {
    let pending = 0;
    let lag = 0;
    for (const g of q.groups || []) {
      pending += Number(g.pending || 0);
      lag += Number(g.lag || 0);
    }
    const c = q.counters || {};
    return {
      bulk_length: q.bulk_length,
      express_length: q.express_length,
      scheduled: q.scheduled,
      dead_letters: q.dead_letters,
      pending,
      lag,
      live_workers: q.live_workers,
      oldest_bulk_age_seconds: q.oldest_bulk_age_seconds,
      oldest_express_age_seconds: q.oldest_express_age_seconds,
      done: c.done || 0,
      retried: c.retried || 0,
      dead: c.dead || 0,
    };
  }

  function renderQueues(queues, now) {
    const names = queues.map((q) => q.queue);
    $('no-queues').hidden = names.length > 0;
    for (const [name, card] of S.cards) {
      if (!names.includes(name)) {
        card.root.remove();
        S.cards.delete(name);
        S.history.delete(name);
      }
    }
    const list = $('queues');
    for (const q of queues) {
      let card = S.cards.get(q.queue);
      if (!card) {
        card = buildCard(q.queue);
        S.cards.set(q.queue, card);
      }
      list.append(card.root); // keeps the API's order (by name)
      const f = figures(q);
      const hist = S.history.get(q.queue) || [];
      hist.push({ t: now, ...f });
      while (hist.length && hist[0].t < now - KEEP_MS) hist.shift();
      S.history.set(q.queue, hist);
      updateCard(card, q, f, hist, now);
    }
    updateQueueSelect(names);
  }

  function buildCard(name) {
    const root = el('article', { class: 'card queue', 'data-queue': name });
    const title = el('h2', null, name);
    const state = el('span', { class: 'badge', 'data-field': 'state' });
    const parts = el('span', { class: 'muted', 'data-field': 'partitions' });
    const actions = el('div', { class: 'buttons' });
    const head = el('div', { class: 'card-head' }, title, state, parts, actions);
    const stats = el('dl', { class: 'stats' });
    const values = {};
    for (const [key, label] of FIELDS) {
      const dd = el('dd', { 'data-field': key }, '–');
      values[key] = dd;
      stats.append(el('div', { class: 'stat' }, el('dt', null, label), dd));
    }
    const charts = el('div', { class: 'charts' });
    const chartBoxes = {};
    for (const [key, label] of [
      ['throughput', 'Throughput (done/s)'],
      ['backlog', 'Backlog: bulk · express · scheduled'],
      ['deadrate', 'Dead-letter rate (dead/s)'],
      ['age', 'Oldest waiting task (s): bulk · express'],
    ]) {
      const now = el('span', { class: 'chart-now' });
      const box = el('div', { class: 'chart', 'data-chart': key });
      charts.append(el('figure', null, el('figcaption', null, label, ' ', now), box));
      chartBoxes[key] = { box, now };
    }
    const workersBox = el('div', { class: 'workers' });
    const details = el('details', { class: 'workers-details' },
      el('summary', null, 'Workers'), workersBox);
    details.addEventListener('toggle', () => {
      if (details.open) refreshWorkers(name, workersBox, S.generation);
    });
    const dlLink = el('button', { type: 'button', class: 'link', 'data-action': 'open-dead-letters' }, 'Dead letters →');
    dlLink.addEventListener('click', () => {
      $('dl-queue').value = name;
      location.hash = '#dead-letters';
      searchDeadLetters();
    });
    root.append(head, stats, charts, el('div', { class: 'card-foot' }, details, dlLink));
    return { root, state, parts, actions, values, chartBoxes, details, workersBox, paused: null };
  }

  function updateCard(card, q, f, hist, now) {
    for (const [key] of FIELDS) {
      const v = f[key];
      card.values[key].textContent = key.startsWith('oldest_') ? fmtSecs(v) : fmtNum(v);
      card.values[key].setAttribute('data-value', String(v));
    }
    card.state.textContent = q.paused ? 'paused' : 'running';
    card.state.className = 'badge ' + (q.paused ? 'paused' : 'running');
    card.root.classList.toggle('is-paused', !!q.paused);
    card.parts.textContent = q.partitions > 1 ? q.partitions + ' partitions' : '';
    if (card.paused !== q.paused) {
      card.paused = q.paused;
      card.actions.replaceChildren();
      const b = q.paused
        ? mutButton('Resume', 'resume', () => signal(q.queue, 'resume', b))
        : mutButton('Pause', 'pause', () => signal(q.queue, 'pause', b), 'warn');
      if (b) card.actions.append(b);
    }
    const rates = (key) => {
      const out = [];
      for (let i = 1; i < hist.length; i++) {
        const dt = (hist[i].t - hist[i - 1].t) / 1000;
        const d = hist[i][key] - hist[i - 1][key];
        if (dt > 0 && d >= 0) out.push([hist[i].t, d / dt]);
      }
      return out;
    };
    const pts = (key) => hist.map((h) => [h.t, Number(h[key]) || 0]);
    const thr = rates('done');
    const dead = rates('dead');
    const last = (a) => (a.length ? a[a.length - 1][1] : null);
    chart(card.chartBoxes.throughput, now, [{ cls: 's-done', name: 'done/s', points: thr }], fmtRate(last(thr)) + '/s');
    chart(card.chartBoxes.backlog, now, [
      { cls: 's-bulk', name: 'bulk', points: pts('bulk_length') },
      { cls: 's-express', name: 'express', points: pts('express_length') },
      { cls: 's-scheduled', name: 'scheduled', points: pts('scheduled') },
    ], fmtNum(f.bulk_length) + ' · ' + fmtNum(f.express_length) + ' · ' + fmtNum(f.scheduled));
    chart(card.chartBoxes.deadrate, now, [{ cls: 's-dead', name: 'dead/s', points: dead }], fmtRate(last(dead)) + '/s');
    chart(card.chartBoxes.age, now, [
      { cls: 's-bulk', name: 'bulk', points: pts('oldest_bulk_age_seconds') },
      { cls: 's-express', name: 'express', points: pts('oldest_express_age_seconds') },
    ], fmtSecs(f.oldest_bulk_age_seconds) + ' · ' + fmtSecs(f.oldest_express_age_seconds));
  }

  // A small line chart of what this page saw (up to KEEP_MS), y from 0 to the largest
  // value; the x axis spans from the first point to now (at least 10 s).
  function chart(target, now, series, current) {
    const W = 300;
    const H = 70;
    const PAD = 2;
    target.now.textContent = current;
    let max = 0;
    let first = now;
    for (const s of series) {
      for (const [t, v] of s.points) {
        max = Math.max(max, v);
        first = Math.min(first, t);
      }
    }
    const t0 = Math.max(now - KEEP_MS, Math.min(first, now - 10000));
    const span = now - t0;
    const top = max > 0 ? max * 1.15 : 1;
    const x = (t) => PAD + ((t - t0) / span) * (W - 2 * PAD);
    const y = (v) => H - PAD - (v / top) * (H - 2 * PAD);
    const root = svg('svg', {
      viewBox: '0 0 ' + W + ' ' + H,
      preserveAspectRatio: 'none',
      role: 'img',
      'aria-label': series.map((s) => s.name).join(', '),
    });
    for (const f of [0.25, 0.5, 0.75]) {
      root.append(svg('line', { x1: 0, x2: W, y1: y(top * f), y2: y(top * f), class: 'grid' }));
    }
    for (const s of series) {
      if (!s.points.length) continue;
      const d = s.points.map(([t, v]) => x(t).toFixed(1) + ',' + y(v).toFixed(1)).join(' ');
      root.append(svg('polyline', { points: d, class: 'line ' + s.cls, 'vector-effect': 'non-scaling-stroke' }));
    }
    const scale = el('span', { class: 'chart-max' }, 'last ' + fmtSecs(span / 1000) + ' · max ' + (max >= 10 ? fmtNum(Math.round(max)) : fmtRate(max)));
    const legend = series.length > 1
      ? el('span', { class: 'legend' }, ...series.map((s) => el('span', { class: 'key ' + s.cls }, s.name)))
      : null;
    target.box.replaceChildren(root, el('div', { class: 'chart-foot' }, legend, scale));
  }

  async function signal(queue, action, button) {
    if (button) button.disabled = true;
    try {
      await api('POST', '/queues/' + enc(queue) + '/' + action);
      setStatus(action === 'pause' ? 'paused ' + queue : 'resumed ' + queue, false);
      const card = S.cards.get(queue);
      if (card) {
        const q = await api('GET', '/queues/' + enc(queue));
        const hist = S.history.get(queue) || [];
        updateCard(card, q, figures(q), hist, Date.now());
      }
    } catch (e) {
      setStatus(action + ' ' + queue + ' failed: ' + e.message, true);
      if (button) button.disabled = false;
    }
  }

  async function refreshOpenWorkers(gen) {
    for (const [name, card] of S.cards) {
      if (card.details.open) await refreshWorkers(name, card.workersBox, gen);
    }
  }

  async function refreshWorkers(queue, box, gen) {
    let workers;
    try {
      workers = [];
      let cursor = null;
      for (let i = 0; i < 10; i++) {
        const page = await api('GET', '/queues/' + enc(queue) + '/workers' + qs({ cursor, limit: 1000 }));
        workers.push(...page.workers);
        cursor = page.next_cursor;
        if (!cursor) break;
      }
    } catch (e) {
      if (gen === S.generation) box.replaceChildren(el('p', { class: 'error' }, 'workers: ' + e.message));
      return;
    }
    if (gen !== S.generation) return;
    if (!workers.length) {
      box.replaceChildren(el('p', { class: 'empty' }, 'No live worker serves this queue.'));
      return;
    }
    const head = el('tr', null, ...['Consumer', 'Host · pid', 'Version', 'Pool', 'Running / slots', 'Pending bulk · express', 'Last beat', 'Started']
      .map((h) => el('th', null, h)));
    const rows = workers.map((w) => el('tr', { 'data-consumer': w.consumer },
      el('td', { 'data-label': 'Consumer' }, w.consumer),
      el('td', { 'data-label': 'Host · pid' }, (w.host || '–') + ' · ' + (w.pid === null || w.pid === undefined ? '–' : String(w.pid))),
      el('td', { 'data-label': 'Version' }, w.version || '–'),
      el('td', { 'data-label': 'Pool' }, w.pool || 'default'),
      el('td', { 'data-label': 'Running / slots' }, fmtNum(w.running) + ' / ' + fmtNum(w.concurrency)),
      el('td', { 'data-label': 'Pending bulk · express' }, fmtNum(w.pending_bulk) + ' · ' + fmtNum(w.pending_express)),
      el('td', { 'data-label': 'Last beat' }, ago(w.last_beat_at)),
      el('td', { 'data-label': 'Started' }, ago(w.started_at))));
    box.replaceChildren(el('table', { class: 'table workers-table' }, el('thead', null, head), el('tbody', null, ...rows)));
  }

  // ----- dead letters ------------------------------------------------------------------

  function updateQueueSelect(names) {
    const sel = $('dl-queue');
    const same = names.length === S.queueNames.length && names.every((n, i) => n === S.queueNames[i]);
    if (same) return;
    const keep = sel.value;
    S.queueNames = names.slice();
    sel.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
    if (names.includes(keep)) sel.value = keep;
  }

  function readFilter() {
    const ms = (id) => {
      const v = $(id).value;
      if (!v) return null;
      const t = new Date(v).getTime();
      return isFinite(t) ? t : null;
    };
    const f = {};
    const put = (k, v) => {
      if (v !== null && v !== undefined && v !== '') f[k] = v;
    };
    put('type', $('dl-type').value.trim());
    put('reason', $('dl-reason').value.trim());
    put('error', $('dl-error').value.trim());
    put('task_id', $('dl-task-id').value.trim());
    put('since_ms', ms('dl-since'));
    put('until_ms', ms('dl-until'));
    return f;
  }

  function buildBulkButtons() {
    const box = $('dl-bulk');
    box.replaceChildren();
    const rq = mutButton('Requeue all matching…', 'bulk-requeue', () => bulk('requeue', null, rq));
    const del = mutButton('Delete all matching…', 'bulk-delete', () => bulk('delete', null, del), 'danger');
    if (rq) box.append(rq, del);
  }

  function describe(f) {
    const parts = Object.entries(f).map(([k, v]) =>
      k + (k.endsWith('_ms') ? ' ' + fmtTime(v) : ' "' + v + '"'));
    return parts.length ? parts.join(', ') : 'no filter (every dead letter of the queue)';
  }

  async function searchDeadLetters() {
    const queue = $('dl-queue').value;
    if (!queue) {
      $('dl-summary').textContent = 'No queue to search.';
      return;
    }
    const filter = readFilter();
    S.dl = { queue, filter, cursor: null, shown: 0, scanned: 0, gen: S.generation, seq: (S.dl ? S.dl.seq : 0) + 1, done: false };
    $('dl-results').replaceChildren();
    $('dl-more').hidden = true;
    $('dl-summary').textContent = 'Searching ' + queue + ' …';
    await moreDeadLetters();
  }

  // Follows next_cursor until DL_WANT more letters are shown or the search ended: a page
  // can be short (each request looks at a bounded number of letters) and still have more.
  async function moreDeadLetters() {
    const st = S.dl;
    if (!st) return;
    const seq = st.seq;
    const want = st.shown + DL_WANT;
    $('dl-more').hidden = true;
    $('dl-more').disabled = true;
    try {
      for (let i = 0; i < DL_MAX_REQUESTS && st.shown < want; i++) {
        const params = { ...st.filter, cursor: st.cursor, limit: DL_PAGE };
        const page = await api('GET', '/queues/' + enc(st.queue) + '/dead-letters' + qs(params));
        if (S.dl !== st || st.seq !== seq || st.gen !== S.generation) return;
        st.scanned += page.scanned || 0;
        const box = $('dl-results');
        for (const l of page.letters) {
          box.append(letterCard(st.queue, l));
          st.shown += 1;
        }
        st.cursor = page.next_cursor;
        if (!st.cursor) {
          st.done = true;
          break;
        }
        summary(st, true);
      }
    } catch (e) {
      $('dl-summary').textContent = 'Search failed: ' + e.message;
      $('dl-summary').className = 'summary error';
      return;
    }
    summary(st, false);
    $('dl-more').hidden = st.done;
    $('dl-more').disabled = false;
  }

  function summary(st, busy) {
    const s = $('dl-summary');
    s.className = 'summary';
    s.setAttribute('data-count', String(st.shown));
    s.setAttribute('data-done', st.done ? 'true' : 'false');
    s.textContent = st.shown + ' dead letter' + (st.shown === 1 ? '' : 's') + ' shown in ' + st.queue +
      ' (' + describe(st.filter) + '); ' + fmtNum(st.scanned) + ' looked at' +
      (busy ? ', searching …' : st.done ? '; the search is complete.' : '; more may match: press More.');
  }

  function fieldsOf(l) {
    const m = new Map();
    for (const [k, v] of l.fields) if (!m.has(k)) m.set(k, v);
    return m;
  }

  function letterCard(queue, l) {
    const f = fieldsOf(l);
    const ms = Number(String(l.dlq_id).split('-')[0]);
    const taskId = f.get('id');
    const card = el('article', { class: 'letter', 'data-dlq-id': l.dlq_id, 'data-task-id': taskId || '' });
    const head = el('div', { class: 'letter-head' },
      el('strong', { class: 'letter-type' }, f.get('type') || '(no type)'),
      el('span', { class: 'muted' }, fmtTime(ms)),
      el('span', { class: 'badge' }, f.get('dlq_lane') || 'bulk'),
      f.has('dlq_attempts') ? el('span', { class: 'muted' }, f.get('dlq_attempts') + ' attempts') : null);
    const reason = el('div', { class: 'letter-reason' }, el('span', { class: 'muted' }, 'reason '), f.get('dlq_reason') || '–');
    const error = el('div', { class: 'letter-error', 'data-field': 'dlq_error' }, f.get('dlq_error') || '');
    const tid = el('div', { class: 'letter-id' }, el('span', { class: 'muted' }, 'task '), taskId || '(no task id)',
      el('span', { class: 'muted' }, ' · entry '), l.dlq_id);
    const dl = el('dl', { class: 'kv' });
    for (const [k, v] of l.fields) dl.append(el('dt', null, k), el('dd', null, v));
    const details = el('details', null, el('summary', null, 'All fields'), dl);
    const actions = el('div', { class: 'buttons' });
    if (taskId && isFinite(ms)) {
      // One letter: its task id and the millisecond it died (its entry id's time).
      const one = { task_id: taskId, since_ms: ms, until_ms: ms };
      const rq = mutButton('Requeue', 'requeue', () => bulk('requeue', { queue, filter: one, card, label: 'dead letter ' + l.dlq_id + ' (task ' + taskId + ')' }, rq));
      const del = mutButton('Delete', 'delete', () => bulk('delete', { queue, filter: one, card, label: 'dead letter ' + l.dlq_id + ' (task ' + taskId + ')' }, del), 'danger');
      if (rq) actions.append(rq, del);
    }
    card.append(head, tid, reason, error, details, actions);
    return card;
  }

  // A bulk action: a dry run for the count, a confirmation, then the action.
  async function bulk(action, one, button) {
    let queue;
    let filter;
    let what;
    if (one) {
      queue = one.queue;
      filter = one.filter;
      what = one.label;
    } else {
      if (!S.dl) {
        setStatus('Search first: the bulk action uses the filter of the last search.', true);
        return;
      }
      queue = S.dl.queue;
      filter = S.dl.filter;
      what = 'the dead letters of ' + queue + ' matching ' + describe(filter);
    }
    const path = '/queues/' + enc(queue) + '/dead-letters/' + action;
    if (button) button.disabled = true;
    try {
      const dry = await api('POST', path, { filter, dry_run: true });
      if (dry.matched === 0) {
        setStatus('Nothing to ' + action + ': no dead letter matches any more.', false);
        if (one && one.card) one.card.remove();
        return;
      }
      const verb = action === 'requeue' ? 'Requeue' : 'Delete';
      const ok = await askConfirm(verb + ' ' + fmtNum(dry.matched) + ' dead letter' + (dry.matched === 1 ? '' : 's') +
        '? (' + what + ')' + (action === 'delete' ? ' This cannot be undone.' : ''), verb);
      if (!ok) {
        setStatus(action + ' cancelled', false);
        return;
      }
      const out = await api('POST', path, { filter, dry_run: false });
      setStatus((action === 'requeue' ? 'requeued ' : 'deleted ') + fmtNum(out.applied) + ' of ' + fmtNum(out.matched) +
        ' matched' + (out.skipped ? ' (' + fmtNum(out.skipped) + ' skipped: gone meanwhile or without a task)' : ''), false);
      if (one && one.card) {
        one.card.remove();
        if (S.dl) {
          S.dl.shown = Math.max(0, S.dl.shown - 1);
          summary(S.dl, false);
        }
      } else {
        await searchDeadLetters();
      }
    } catch (e) {
      setStatus(action + ' failed: ' + e.message, true);
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  }

  function askConfirm(text, okLabel) {
    closeConfirm(false);
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okLabel || 'Confirm';
    $('confirm').hidden = false;
    $('confirm-cancel').focus();
    return new Promise((resolve) => {
      S.confirmResolve = resolve;
    });
  }

  function closeConfirm(result) {
    $('confirm').hidden = true;
    $('confirm-text').textContent = '';
    $('confirm-ok').textContent = 'Confirm';
    const r = S.confirmResolve;
    S.confirmResolve = null;
    if (r) r(result);
  }

  // ----- sagas -------------------------------------------------------------------------

  async function loadSagas(more) {
    const gen = S.generation;
    const state = $('saga-state').value;
    const box = $('saga-list');
    if (!more) S.sagaCursor = null;
    try {
      const page = await api('GET', '/sagas' + qs({ state, cursor: more ? S.sagaCursor : null, limit: 50 }));
      if (gen !== S.generation) return;
      if (!more) box.replaceChildren();
      if (!page.sagas.length && !more) {
        box.append(el('p', { class: 'empty' }, 'No saga in this state.'));
      }
      for (const s of page.sagas) box.append(sagaRow(s));
      S.sagaCursor = page.next_cursor;
      $('saga-more').hidden = !S.sagaCursor;
    } catch (e) {
      if (gen === S.generation) box.replaceChildren(el('p', { class: 'error' }, 'sagas: ' + e.message));
    }
  }

  function sagaRow(s) {
    const row = el('button', { type: 'button', class: 'saga-row', 'data-saga-id': s.id },
      el('span', { class: 'badge st-' + s.status }, s.status),
      el('strong', null, s.saga),
      el('span', { class: 'mono' }, s.id),
      el('span', { class: 'muted' }, s.current_step ? 'at ' + s.current_step : ''),
      el('span', { class: 'muted' }, 'updated ' + ago(s.updated_at)),
      s.error ? el('span', { class: 'error' }, s.error) : null);
    row.addEventListener('click', () => openSaga(s.id, false));
    return row;
  }

  async function openSaga(id, refresh) {
    const gen = S.generation;
    const box = $('saga-detail');
    let v;
    try {
      v = await api('GET', '/sagas/' + enc(id));
    } catch (e) {
      if (gen === S.generation && !refresh) box.replaceChildren(el('p', { class: 'error' }, 'saga ' + id + ': ' + e.message));
      return;
    }
    if (gen !== S.generation) return;
    if (refresh && (S.sagaOpen !== id)) return;
    S.sagaOpen = FINAL_SAGA.includes(v.status) ? null : id;
    if (refresh && S.sagaOpen === null && box.getAttribute('data-rev') === String(v.rev)) return;
    box.setAttribute('data-rev', String(v.rev));
    box.replaceChildren(sagaView(v));
  }

  function sagaView(v) {
    const root = el('article', { class: 'card saga', 'data-saga-id': v.id });
    const actions = el('div', { class: 'buttons' });
    if (!FINAL_SAGA.includes(v.status)) {
      const b = mutButton('Abort…', 'abort', async () => {
        const ok = await askConfirm('Abort saga ' + v.id + ' (' + v.saga + ')? Its completed steps are compensated.', 'Abort');
        if (!ok) return;
        b.disabled = true;
        try {
          const out = await api('POST', '/sagas/' + enc(v.id) + '/abort', {});
          setStatus('saga ' + v.id + ' is now ' + out.state, false);
          await openSaga(v.id, false);
        } catch (e) {
          setStatus('abort failed: ' + e.message, true);
          b.disabled = false;
        }
      }, 'danger');
      if (b) actions.append(b);
    }
    const close = el('button', { type: 'button', class: 'link' }, 'Close');
    close.addEventListener('click', () => {
      S.sagaOpen = null;
      $('saga-detail').replaceChildren();
    });
    actions.append(close);
    root.append(el('div', { class: 'card-head' },
      el('h2', null, v.saga, ' ', el('span', { class: 'mono' }, v.id)),
      el('span', { class: 'badge st-' + v.status }, v.status), actions));
    const kv = el('dl', { class: 'stats' });
    const put = (k, val) => kv.append(el('div', { class: 'stat' }, el('dt', null, k), el('dd', null, val)));
    put('Version', String(v.version));
    put('Current step', v.current_step || '–');
    put('Created', fmtTime(v.created_at));
    put('Updated', fmtTime(v.updated_at));
    put('Finished', fmtTime(v.finished_at));
    put('Deadline', fmtTime(v.deadline_at));
    root.append(kv);
    if (v.error) root.append(el('p', { class: 'error' }, v.error));
    root.append(el('h3', null, 'Timeline'), timeline(v));
    const steps = el('ol', { class: 'steps' });
    for (const s of v.steps) {
      const d = (a, b) => (a ? fmtSecs(((b || Date.now()) - a) / 1000) : '–');
      steps.append(el('li', { class: 'step st-' + s.status, 'data-step': s.name },
        el('div', null, el('strong', null, s.name), ' ', el('span', { class: 'badge st-' + s.status }, s.status),
          el('span', { class: 'muted' }, ' ' + s.action + ' on ' + s.queue + ' · ' + s.attempts + ' attempt' + (s.attempts === 1 ? '' : 's'))),
        el('div', { class: 'muted' }, 'action ' + fmtTime(s.started_at) + ' → ' + fmtTime(s.ended_at) + ' (' + d(s.started_at, s.ended_at) + ')'),
        s.compensation
          ? el('div', { class: 'muted' }, 'compensation ' + s.compensation + ': ' +
            (s.compensation_started_at
              ? fmtTime(s.compensation_started_at) + ' → ' + fmtTime(s.compensation_ended_at) + ' (' + d(s.compensation_started_at, s.compensation_ended_at) + ', ' + s.compensation_attempts + ' attempts)'
              : 'not run'))
          : null,
        s.error ? el('div', { class: 'error' }, s.error) : null));
    }
    root.append(steps);
    const head = el('tr', null, ...['At', 'Event', 'Step', 'From → to', 'Detail'].map((h) => el('th', null, h)));
    const rows = v.history.map((h) => el('tr', null,
      el('td', { 'data-label': 'At' }, fmtTime(h.at)),
      el('td', { 'data-label': 'Event' }, h.event),
      el('td', { 'data-label': 'Step' }, h.step || '–'),
      el('td', { 'data-label': 'From → to' }, h.from + ' → ' + h.to),
      el('td', { 'data-label': 'Detail' }, h.detail || '')));
    root.append(el('h3', null, 'History'), el('table', { class: 'table' }, el('thead', null, head), el('tbody', null, ...rows)));
    return root;
  }

  // Steps as rows of bars on one time axis: the action, then its compensation.
  function timeline(v) {
    const now = Date.now();
    const t0 = v.created_at;
    let t1 = v.finished_at || now;
    for (const s of v.steps) {
      for (const t of [s.ended_at, s.compensation_ended_at]) if (t && t > t1) t1 = t;
    }
    const span = Math.max(1, t1 - t0);
    const W = 600;
    const LABEL = 130;
    const ROW = 22;
    const H = ROW * v.steps.length + 20;
    const x = (t) => LABEL + ((t - t0) / span) * (W - LABEL - 6);
    const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'timeline', role: 'img', 'aria-label': 'step timeline' });
    v.steps.forEach((s, i) => {
      const y = i * ROW + 4;
      root.append(svg('text', { x: 2, y: y + 13, class: 'tl-label' }, s.name.length > 18 ? s.name.slice(0, 17) + '…' : s.name));
      if (s.started_at) {
        const a = x(s.started_at);
        const b = x(s.ended_at || now);
        root.append(svg('rect', { x: a, y, width: Math.max(2, b - a), height: 8, class: 'tl-action st-' + s.status },
          svg('title', null, s.action + ': ' + fmtTime(s.started_at) + ' → ' + fmtTime(s.ended_at))));
      }
      if (s.compensation_started_at) {
        const a = x(s.compensation_started_at);
        const b = x(s.compensation_ended_at || now);
        root.append(svg('rect', { x: a, y: y + 10, width: Math.max(2, b - a), height: 8, class: 'tl-comp' },
          svg('title', null, 'compensation ' + (s.compensation || '') + ': ' + fmtTime(s.compensation_started_at) + ' → ' + fmtTime(s.compensation_ended_at))));
      }
    });
    const yAxis = H - 4;
    root.append(svg('text', { x: LABEL, y: yAxis, class: 'tl-axis' }, fmtTime(t0)));
    root.append(svg('text', { x: W - 4, y: yAxis, class: 'tl-axis end' }, '+' + fmtSecs(span / 1000)));
    return el('div', { class: 'timeline-box' }, root,
      el('div', { class: 'legend' }, el('span', { class: 'key s-action' }, 'action'), el('span', { class: 'key s-comp' }, 'compensation')));
  }

  // ----- wiring ------------------------------------------------------------------------

  // ----- schedules ---------------------------------------------------------------------

  async function loadSchedules(gen) {
    const all = [];
    let cursor = null;
    for (let i = 0; i < 10; i++) {
      const page = await api('GET', '/schedules' + qs({ cursor, limit: 500 }));
      all.push(...page.schedules);
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    if (gen !== S.generation) return;
    $('no-schedules').hidden = all.length > 0;
    $('schedules').replaceChildren(...all.map(scheduleCard));
  }

  function scheduleCard(s) {
    const d = s.definition;
    const when = d
      ? (d.cron ? 'cron ' + d.cron + ' (' + (d.timezone || 'UTC') + ')' : 'every ' + d.every) +
        ' → ' + d.queue + ' / ' + d.type + (d.express ? ' (express)' : '')
      : 'invalid definition: ' + s.problems.join('; ');
    const state = !d ? 'invalid' : s.paused ? 'paused' : 'running';
    const actions = el('div', { class: 'buttons' },
      d && (s.paused
        ? mutButton('Resume', 'resume-schedule', (ev) => scheduleAction(s.name, 'resume', ev.target))
        : mutButton('Pause', 'pause-schedule', (ev) => scheduleAction(s.name, 'pause', ev.target))),
      d && mutButton('Trigger now', 'trigger-schedule', (ev) => scheduleAction(s.name, 'trigger', ev.target)));
    const stats = el('dl', { class: 'stats' });
    for (const [label, field, value] of [
      ['Next fire', 'next', s.paused ? 'paused' : fmtTime(s.next_fire_ms)],
      ['Last fired', 'last-fired', ago(s.last_fired_ms)],
      ['Last task', 'last-task', s.last_task || '–'],
      ['Fired', 'fired', fmtNum(s.fired)],
      ['Late', 'late', fmtNum(s.late)],
      ['Skipped', 'skipped', fmtNum(s.skipped)],
    ]) {
      stats.append(el('div', { class: 'stat' }, el('dt', null, label), el('dd', { 'data-field': field }, value)));
    }
    return el('article', { class: 'card schedule' + (s.paused ? ' is-paused' : ''), 'data-schedule': s.name },
      el('div', { class: 'card-head' },
        el('h2', null, s.name),
        el('span', { class: 'badge ' + state, 'data-field': 'state' }, state),
        actions),
      el('p', { class: 'muted', 'data-field': 'when' }, when),
      stats);
  }

  async function scheduleAction(name, action, button) {
    if (button) button.disabled = true;
    try {
      const r = await api('POST', '/schedules/' + enc(name) + '/' + action);
      setStatus(action === 'trigger' ? 'triggered ' + name + ': task ' + r.task_id : action + 'd schedule ' + name, false);
      await loadSchedules(S.generation);
    } catch (e) {
      setStatus(action + ' ' + name + ' failed: ' + e.message, true);
      if (button) button.disabled = false;
    }
  }

  function wire() {
    $('login-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      $('login-error').textContent = '';
      $('login-submit').disabled = true;
      try {
        await signIn(t);
      } catch (e) {
        S.token = '';
        $('login-error').textContent = e.status === 401 ? 'That token was refused: ' + e.message : 'Sign-in failed: ' + e.message;
      } finally {
        $('login-submit').disabled = false;
      }
    });
    $('logout').addEventListener('click', () => signOut(''));
    window.addEventListener('hashchange', showTab);
    $('dl-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      searchDeadLetters();
    });
    $('dl-form').addEventListener('reset', () => {
      setTimeout(() => {
        if (S.queueNames.length && !$('dl-queue').value) $('dl-queue').value = S.queueNames[0];
      }, 0);
    });
    $('dl-more').addEventListener('click', () => moreDeadLetters());
    $('saga-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const id = $('saga-id').value.trim();
      if (id) openSaga(id, false);
      loadSagas(false);
    });
    $('saga-state').addEventListener('change', () => loadSagas(false));
    $('saga-more').addEventListener('click', () => loadSagas(true));
    $('confirm-ok').addEventListener('click', () => closeConfirm(true));
    $('confirm-cancel').addEventListener('click', () => closeConfirm(false));
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && !$('confirm').hidden) closeConfirm(false);
    });
  }

  async function start() {
    wire();
    const saved = sessionStorage.getItem(TOKEN_KEY) || '';
    try {
      // With no tokens configured (loopback) the API is open: an empty token signs in.
      await signIn(saved);
    } catch (e) {
      signOut(e.status === 401 ? (saved ? 'The saved token was refused; sign in again.' : '') : 'Cannot reach the API: ' + e.message);
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
