'use strict';
// The interactive report of pyiqa_maclip.app.html_report. All rows live in `order` (the finite rows
// from the worst to the best) and `goodness` (their scores, negated for a lower-is-better metric,
// ascending): a threshold is one binary search, and every list on the page is a slice of `order`.
(function () {
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const $ = (id) => document.getElementById(id);
  const sign = data.lowerBetter ? -1 : 1;
  const scores = data.scores;
  const PAGE = 60, NEAR = 4, FAILED_PAGE = 100;
  // Cells a spreadsheet would run as a formula get a ' in front: the rule of
  // pyiqa_maclip.app.benchmark.tables.spreadsheet_text, mirrored here.
  const FORMULA_STARTS = ['=', '+', '-', '@', '\t', '\r', "'"];

  const order = Int32Array.from(scores.map((s, i) => (s === null ? -1 : i)).filter((i) => i >= 0));
  order.sort((a, b) => sign * (scores[a] - scores[b]) || a - b);
  const goodness = Float64Array.from(order, (i) => sign * scores[i]);
  const pictured = Int32Array.from(Array.from(order.keys()).filter((r) => order[r] in data.thumbnails));
  const rankOf = new Map(Array.from(order, (row, rank) => [row, rank]));
  const m = order.length;
  const low = m ? Math.min(goodness[0] * sign, goodness[m - 1] * sign) : 0;
  const high = m ? Math.max(goodness[0] * sign, goodness[m - 1] * sign) : 1;
  const state = { threshold: NaN, cut: 0, view: 'dropped', order: 'worst', page: 0, failedPage: 0, current: null };

  function lowerBound(array, value) { // first index whose value is >= value
    let lo = 0, hi = array.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (array[mid] < value) lo = mid + 1; else hi = mid; }
    return lo;
  }
  function formatScore(value) { return value === null ? '—' : Number(value.toPrecision(6)).toString(); }
  function share(count) { return m ? (100 * count / m).toFixed(count && count < m ? 1 : 0) + ' %' : ''; }
  function shownKey(key) { // control characters as escapes, so that a key stays on one line
    return key.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => ({ '\n': '\\n', '\r': '\\r', '\t': '\\t' }[c]
      || '\\x' + c.charCodeAt(0).toString(16).padStart(2, '0')));
  }
  function baseName(key) { const name = key.split('/').pop(); return name || key; }
  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ------------------------------------------------------------------ the histogram
  const SVG = 'http://www.w3.org/2000/svg';
  const svg = $('histogram');
  const size = { width: 1000, height: 230, left: 48, right: 12, top: 22, bottom: 24 };
  const bins = Math.max(10, Math.min(120, Math.round(Math.sqrt(m))));
  const counts = new Array(bins).fill(0);
  const span = high - low || 1;
  for (let r = 0; r < m; r++) counts[Math.min(bins - 1, Math.floor((scores[order[r]] - low) / span * bins))]++;
  const x = (value) => size.left + (value - low) / span * (size.width - size.left - size.right);
  const xValue = (px) => low + (px - size.left) / (size.width - size.left - size.right) * span;
  function shape(tag, attributes, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    (parent || svg).appendChild(node);
    return node;
  }
  function drawHistogram() {
    svg.replaceChildren();
    svg.setAttribute('viewBox', `0 0 ${size.width} ${size.height}`);
    svg.setAttribute('preserveAspectRatio', 'none');
    const log = $('log-scale').checked;
    const most = Math.max(1, ...counts);
    const height = (c) => (log ? Math.log1p(c) / Math.log1p(most) : c / most);
    const base = size.height - size.bottom, tall = base - size.top, step = (size.width - size.left - size.right) / bins;
    state.bars = counts.map((c, b) => shape('rect', { class: 'bar', x: size.left + b * step + 0.5, width: Math.max(step - 1, 0.5),
      y: base - height(c) * tall, height: height(c) * tall }));
    shape('line', { class: 'axis', x1: size.left, x2: size.width - size.right, y1: base, y2: base });
    const rough = span / 8, power = 10 ** Math.floor(Math.log10(rough));
    const tick = power * [1, 2, 5, 10].find((f) => f * power >= rough);
    for (let value = Math.ceil(low / tick) * tick; value <= low + span + tick * 1e-9; value += tick) {
      const label = Number(value.toPrecision(12)).toString();
      shape('line', { class: 'axis', x1: x(value), x2: x(value), y1: base, y2: base + 4 });
      shape('text', { x: x(value), y: size.height - 6, 'text-anchor': 'middle' }).textContent = label;
    }
    shape('text', { x: size.left - 6, y: size.top + 4, 'text-anchor': 'end' }).textContent = String(most);
    shape('text', { x: size.left - 6, y: base, 'text-anchor': 'end' }).textContent = '0';
    for (const [label, value] of Object.entries(data.quantiles)) {
      shape('line', { class: 'quantile', x1: x(value), x2: x(value), y1: size.top - 6, y2: base });
      shape('text', { class: 'quantile-label', x: x(value), y: size.top - 9, 'text-anchor': 'middle' }).textContent = label;
    }
    state.shade = shape('rect', { class: 'shade', y: size.top - 6, height: base - size.top + 6 });
    state.line = shape('line', { class: 'threshold', y1: size.top - 12, y2: base });
  }
  function moveHistogramThreshold() {
    const at = Math.max(size.left, Math.min(size.width - size.right, x(state.threshold)));
    const from = data.lowerBetter ? at : size.left, to = data.lowerBetter ? size.width - size.right : at;
    state.shade.setAttribute('x', from);
    state.shade.setAttribute('width', Math.max(0, to - from));
    state.line.setAttribute('x1', at);
    state.line.setAttribute('x2', at);
    state.bars.forEach((bar, b) => { // a bin wholly on the dropped side is drawn as dropped
      const edge = sign * (low + span * (data.lowerBetter ? b : b + 1) / bins);
      bar.classList.toggle('dropped', edge < sign * state.threshold || (edge === sign * state.threshold && !data.lowerBetter));
    });
  }
  function thresholdAtPointer(event) {
    const box = svg.getBoundingClientRect();
    setThreshold(Number(xValue((event.clientX - box.left) / box.width * size.width).toPrecision(6)));
  }
  svg.addEventListener('pointerdown', (event) => { svg.setPointerCapture(event.pointerId); thresholdAtPointer(event); });
  svg.addEventListener('pointermove', (event) => { if (event.buttons & 1) thresholdAtPointer(event); });

  // ------------------------------------------------------------------ cards and the detail view
  function card(rank) {
    const row = order[rank], picture = data.thumbnails[row];
    const node = element('button', 'card ' + (rank < state.cut ? 'dropped' : 'kept') + (picture ? '' : ' text-only'));
    node.type = 'button';
    node.dataset.row = row;
    node.title = shownKey(data.keys[row]);
    const frame = node.appendChild(element('div', 'picture', picture ? undefined : 'no picture'));
    if (picture) { const img = frame.appendChild(element('img')); img.src = picture; img.alt = ''; img.loading = 'lazy'; }
    node.appendChild(element('div', 'score', formatScore(scores[row])));
    node.appendChild(element('div', 'name', shownKey(baseName(data.keys[row]))));
    node.addEventListener('click', () => showDetail(rank));
    return node;
  }
  function showDetail(rank) {
    state.current = rank;
    const row = order[rank];
    $('detail-key').textContent = shownKey(data.keys[row]);
    const image = $('detail-image'), map = $('detail-map');
    image.hidden = !data.thumbnails[row];
    image.src = data.thumbnails[row] || '';
    map.hidden = !data.qualityMaps[row];
    map.src = data.qualityMaps[row] || '';
    const values = [['score', formatScore(scores[row])], ['side', rank < state.cut ? 'dropped' : 'kept'],
      ['rank from the worst', `${rank + 1} of ${m}`], ['row', String(row)]];
    for (const [name, column] of Object.entries(data.components)) values.push([name, formatScore(column[row])]);
    $('detail-values').replaceChildren(...values.map(([name, value]) => {
      const tr = element('tr'); tr.append(element('td', '', name), element('td', '', value)); return tr;
    }));
    $('detail-previous').disabled = rank === 0;
    $('detail-next').disabled = rank === m - 1;
    if (!$('detail').open) $('detail').showModal();
  }
  $('detail-previous').addEventListener('click', () => state.current > 0 && showDetail(state.current - 1));
  $('detail-next').addEventListener('click', () => state.current < m - 1 && showDetail(state.current + 1));
  $('detail').addEventListener('keydown', (event) => {
    const button = { ArrowLeft: 'detail-previous', ArrowRight: 'detail-next' }[event.key];
    if (button) $(button).click();
  });

  // ------------------------------------------------------------------ paged lists
  function pager(holder, pages, page, go) {
    holder.replaceChildren();
    const previous = holder.appendChild(element('button', '', '‹ previous'));
    const box = holder.appendChild(element('input'));
    holder.appendChild(element('span', '', `of ${pages}`));
    const next = holder.appendChild(element('button', '', 'next ›'));
    Object.assign(box, { type: 'number', min: 1, max: pages, value: page + 1 });
    box.setAttribute('aria-label', 'page');
    previous.type = next.type = 'button';
    previous.disabled = page === 0;
    next.disabled = page >= pages - 1;
    previous.addEventListener('click', () => go(page - 1));
    next.addEventListener('click', () => go(page + 1));
    box.addEventListener('change', () => go(Math.max(0, Math.min(pages - 1, Math.round(box.value) - 1))));
  }
  function galleryRanks() { // [from, to) in a list of ranks
    const ranks = $('pictures-only').checked ? pictured : null;
    const cut = ranks ? lowerBound(ranks, state.cut) : state.cut, length = ranks ? ranks.length : m;
    const [from, to] = { dropped: [0, cut], kept: [cut, length], all: [0, length] }[state.view];
    return { ranks, from, to };
  }
  function drawGallery() {
    const { ranks, from, to } = galleryRanks(), count = to - from, pages = Math.max(1, Math.ceil(count / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const cards = [];
    for (let i = state.page * PAGE; i < Math.min(count, (state.page + 1) * PAGE); i++) {
      const at = state.order === 'worst' ? from + i : to - 1 - i;
      cards.push(card(ranks ? ranks[at] : at));
    }
    $('gallery').replaceChildren(...(cards.length ? cards : [element('p', 'empty', 'no rows here')]));
    pager($('gallery-pager'), pages, state.page, (page) => { state.page = page; drawGallery(); });
    for (const tab of document.querySelectorAll('#gallery-tabs [role=tab]')) {
      tab.setAttribute('aria-selected', String(tab.dataset.view === state.view));
    }
  }
  for (const tab of document.querySelectorAll('#gallery-tabs [role=tab]')) {
    tab.addEventListener('click', () => { state.view = tab.dataset.view; state.page = 0; drawGallery(); });
  }
  $('gallery-order').addEventListener('change', (event) => { state.order = event.target.value; state.page = 0; drawGallery(); });
  $('pictures-only').addEventListener('change', () => { state.page = 0; drawGallery(); });

  function drawFailed() {
    const pages = Math.max(1, Math.ceil(data.failed.length / FAILED_PAGE)), start = state.failedPage * FAILED_PAGE;
    $('failed-list').tBodies[0].replaceChildren(...data.failed.slice(start, start + FAILED_PAGE).map(([key, error]) => {
      const tr = element('tr'); tr.append(element('td', '', shownKey(key)), element('td', '', error)); return tr;
    }));
    $('failed-total').textContent = `(${data.failed.length} files)`;
    $('failed-pager').hidden = pages < 2;
    pager($('failed-pager'), pages, state.failedPage, (page) => { state.failedPage = page; drawFailed(); });
  }

  // ------------------------------------------------------------------ the threshold
  function drawNear() {
    const cut = lowerBound(pictured, state.cut);
    const dropped = Array.from(pictured.slice(Math.max(0, cut - NEAR), cut));
    const kept = Array.from(pictured.slice(cut, cut + NEAR));
    $('just-dropped').replaceChildren(...(dropped.length ? dropped.map(card) : [element('p', 'empty', 'no pictured rows dropped')]));
    $('just-kept').replaceChildren(...(kept.length ? kept.map(card) : [element('p', 'empty', 'no pictured rows kept')]));
  }
  function selectCommand() {
    const option = data.lowerBetter ? '--max-score' : '--min-score';
    return `pyiqa-maclip select ${data.scoresFile} ${option} ${String(state.threshold)} -o ${data.keptFile}`;
  }
  function setThreshold(value) {
    const t = Number(value);
    if (!Number.isFinite(t)) return null;
    state.threshold = t;
    state.cut = lowerBound(goodness, sign * t);
    const dropped = state.cut, kept = m - state.cut;
    $('kept-count').textContent = String(kept);
    $('dropped-count').textContent = String(dropped);
    $('kept-share').textContent = share(kept);
    $('dropped-share').textContent = share(dropped);
    const [keep, drop] = data.lowerBetter ? ['≤', '>'] : ['≥', '<'];
    $('kept-rule').textContent = `score ${keep} ${formatScore(t)}`;
    $('dropped-rule').textContent = `score ${drop} ${formatScore(t)}`;
    if (Number($('threshold-input').value) !== t) $('threshold-input').value = String(t);
    if (document.activeElement !== $('threshold-slider')) $('threshold-slider').value = String(Math.max(low, Math.min(high, t)));
    $('select-command').textContent = selectCommand();
    moveHistogramThreshold();
    drawNear();
    drawGallery();
    return { kept, dropped };
  }
  $('threshold-slider').addEventListener('input', (event) => {
    const t = Number(Number(event.target.value).toPrecision(6));
    $('threshold-input').value = String(t);
    setThreshold(t);
  });
  $('threshold-input').addEventListener('input', (event) => {
    if (event.target.value !== '') setThreshold(event.target.value);
  });
  $('log-scale').addEventListener('change', () => { drawHistogram(); moveHistogramThreshold(); });

  // ------------------------------------------------------------------ taking the decision away
  function csvCell(text) {
    const safe = FORMULA_STARTS.some((start) => text.startsWith(start)) ? "'" + text : text;
    return /[",\r\n]/.test(safe) ? '"' + safe.replace(/"/g, '""') + '"' : safe;
  }
  function download(kept) { // rows in table order; UTF-8 with a byte order mark so spreadsheets read it as such
    const lines = ['key,score'];
    for (let row = 0; row < scores.length; row++) {
      if (scores[row] === null || (sign * scores[row] >= sign * state.threshold) !== kept) continue;
      lines.push(csvCell(data.keys[row]) + ',' + String(scores[row]));
    }
    const link = element('a');
    link.href = URL.createObjectURL(new Blob(['\ufeff' + lines.join('\r\n') + '\r\n'], { type: 'text/csv' }));
    link.download = kept ? 'kept.csv' : 'dropped.csv';
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  }
  $('download-kept').addEventListener('click', () => download(true));
  $('download-dropped').addEventListener('click', () => download(false));
  $('copy-command').addEventListener('click', () => {
    const range = document.createRange();
    range.selectNodeContents($('select-command'));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    if (navigator.clipboard) navigator.clipboard.writeText(selectCommand()).catch(() => {});
  });

  // ------------------------------------------------------------------ start
  const unscored = scores.length - m;
  document.title = data.title;
  $('title').textContent = data.title;
  const number = (count) => count.toLocaleString('en-US');
  $('summary').textContent = `${number(m)} rows scored by ${data.metric} (${data.lowerBetter ? 'lower' : 'higher'} `
    + 'is better)' + (unscored ? `, ${number(unscored)} without a finite score (neither kept nor dropped)` : '')
    + `, ${number(data.failed.length)} failed. A row whose score equals the threshold is kept.`;
  for (const control of [$('threshold-slider'), $('threshold-input')]) {
    control.min = String(low);
    control.max = String(high === low ? high + 1 : high);
  }
  $('threshold-input').removeAttribute('min');
  $('threshold-input').removeAttribute('max');
  drawHistogram();
  drawFailed();
  $('failed-section').hidden = data.failed.length === 0;
  const start = data.quantiles[data.lowerBetter ? '95%' : '5%'];
  setThreshold(start === undefined ? low : Number(start.toPrecision(6)));
  window.report = { setThreshold, get threshold() { return state.threshold; }, ready: true };
}());
