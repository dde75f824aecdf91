// The candidate's exam page: sign in, start the lab, answer the tasks, work
// in the lab's terminals, submit. Everything it shows comes from the API
// (/api/...) and the terminal relay (/ws/...); the session cookie is
// HttpOnly, so this script never sees a token.
(function () {
  'use strict';

  // Named intervals and delays.
  var POLL_PROVISIONING_MS = 1000;
  var POLL_READY_MS = 10000;
  var SAVE_DELAY_MS = 700;
  var SAVE_RETRY_MS = 3000;
  var RECONNECT_MIN_MS = 1000;
  var RECONNECT_MAX_MS = 15000;
  var LOW_TIME_S = 10 * 60;
  var DONE_KEY = 'examlab.done';

  var $ = function (id) { return document.getElementById(id); };
  var views = ['loading', 'login', 'intro', 'provision', 'work', 'done', 'failed'];

  var state = {
    exam: null,
    session: null,
    skew: 0, // server clock minus ours, in ms
    pollTimer: 0,
    clockTimer: 0,
    workBuilt: false,
    terms: {},
    active: '',
    saves: {},
    ended: false
  };

  // ---- helpers -----------------------------------------------------------

  function api(method, path, body) {
    var opts = { method: method, credentials: 'same-origin', headers: {} };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!res.ok) {
          var err = new Error((data && data.error) || ('the server answered ' + res.status));
          err.status = res.status;
          throw err;
        }
        return data;
      });
    }, function () {
      var err = new Error('cannot reach the exam server');
      err.status = 0;
      throw err;
    });
  }

  function show(name) {
    views.forEach(function (v) { $('view-' + v).hidden = v !== name; });
    document.body.setAttribute('data-view', name);
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'class') { e.className = attrs[k]; } else { e.setAttribute(k, attrs[k]); }
    });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  function banner(text, bad) {
    var b = $('banner');
    b.textContent = text || '';
    b.hidden = !text;
    b.classList.toggle('bad', !!bad);
    document.body.classList.toggle('has-banner', !!text);
    refit();
  }

  function fmtTime(iso) {
    var d = new Date(iso);
    return isNaN(d) ? '' : d.toLocaleString();
  }

  function pad(n) { return (n < 10 ? '0' : '') + n; }

  // ---- session flow ------------------------------------------------------

  function boot() {
    var linkCode = codeFromLink();
    api('GET', '/api/exam').then(function (exam) {
      state.exam = exam;
      $('exam-title').textContent = exam.title;
      document.title = exam.title + ' · examlab';
      if (linkCode) {
        // Opened from an invitation: sign in as its candidate.
        $('login-code').value = linkCode;
        return signIn({ code: linkCode });
      }
      return api('GET', '/api/me').then(enter, function (err) {
        if (err.status === 401 || err.status === 403) {
          // A finished session no longer answers to its cookie; this
          // browser still remembers that it was submitted here.
          if (!showRememberedDone()) { showLogin(); }
          return;
        }
        throw err;
      });
    }).catch(function (err) {
      show('loading');
      banner('The exam page could not load: ' + err.message + '. Reload to try again.', true);
    });
  }

  function showLogin() {
    stopPolling();
    closeTerminals();
    state.session = null;
    $('signout').hidden = true;
    $('submit-open').hidden = true;
    $('clock').hidden = true;
    $('who').hidden = true;
    show('login');
    $('login-code').focus();
    // Where a sitting is open to anyone (practice, demos), an email may be
    // used instead of a code; the server decides, this only shows the way.
    api('GET', '/api/signin').then(function (opts) {
      var open = opts.open_registration || [];
      var sel = $('login-sitting');
      sel.textContent = '';
      open.forEach(function (o) {
        var opt = document.createElement('option');
        opt.value = o.id;
        opt.textContent = o.title || o.id;
        sel.appendChild(opt);
      });
      sel.hidden = open.length < 2;
      if (open.length === 1) {
        $('login-open-text').textContent = 'No code? “' + (open[0].title || open[0].id) +
          '” lets anyone sign in with an email address:';
      }
      $('login-open').hidden = open.length === 0;
    }).catch(function () { $('login-open').hidden = true; });
  }

  // An invitation link is /join#code=XXXX-XXXX-XXXX-XXXX: the code rides in
  // the fragment, which is never sent to a server. It is read once and
  // taken out of the address bar.
  function codeFromLink() {
    var m = /(?:^#|&)code=([^&]+)/.exec(location.hash || '');
    if (!m) { return ''; }
    try { history.replaceState(null, '', location.pathname); } catch (e) { /* keep going */ }
    return decodeURIComponent(m[1]);
  }

  function signIn(body) {
    var errEl = $('login-error');
    errEl.hidden = true;
    $('login-submit').disabled = true;
    try { sessionStorage.removeItem(DONE_KEY); } catch (e) { /* nothing to forget */ }
    return api('POST', '/api/login', body).then(function (res) {
      return api('GET', '/api/exam').then(function (exam) {
        state.exam = exam;
        $('exam-title').textContent = exam.title;
        enter(res.session);
        if (res.code) {
          banner('Your access code is ' + res.code + '. Write it down: you need it to sign in again, ' +
            'from this or another browser.');
        }
      });
    }).catch(function (err) {
      show('login');
      errEl.textContent = err.message;
      errEl.hidden = false;
    }).then(function () { $('login-submit').disabled = false; });
  }

  $('login-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var code = $('login-code').value.trim();
    var email = $('login-email').value.trim();
    var errEl = $('login-error');
    if (code) {
      if (code.replace(/[\s-]/g, '').length !== 16) {
        errEl.textContent = 'An access code has 16 letters and digits, like 7KQ2-M9XD-4HTV-P0RC.';
        errEl.hidden = false;
        return;
      }
      signIn({ code: code });
      return;
    }
    if (!$('login-open').hidden && email) {
      if (email.indexOf('@') < 1) {
        errEl.textContent = 'Enter a valid email address.';
        errEl.hidden = false;
        return;
      }
      signIn({ email: email, sitting: $('login-sitting').value });
      return;
    }
    errEl.textContent = 'Enter the access code from your invitation.';
    errEl.hidden = false;
  });

  $('signout').addEventListener('click', function () {
    flushSaves().then(function () {
      return api('POST', '/api/logout');
    }).catch(function () {}).then(showLogin);
  });

  // enter shows whatever the session's state calls for.
  function enter(view) {
    state.session = view;
    banner('');
    syncClock(view);
    $('who').textContent = view.email;
    $('who').hidden = false;
    $('signout').hidden = false;
    switch (view.status) {
      case 'created':
        showIntro();
        break;
      case 'queued':
      case 'provisioning':
        showProvisioning(view);
        poll(POLL_PROVISIONING_MS);
        break;
      case 'ready':
        showWork();
        poll(POLL_READY_MS);
        break;
      case 'failed':
        endWork();
        $('failed-text').textContent = view.error || 'The lab did not come up.';
        show('failed');
        break;
      default: // submitted, archiving, completed, expired
        showDone(view);
    }
  }

  function poll(every) {
    stopPolling();
    state.pollTimer = setTimeout(function tick() {
      api('GET', '/api/session/' + state.session.id + '/status').then(function (v) {
        if (state.session && v.status !== state.session.status) {
          enter(v);
          return;
        }
        state.session = v;
        syncClock(v);
        if (v.status === 'provisioning') { renderNodes(v.nodes); }
        if (v.status === 'queued') { renderQueue(v); }
        if (!state.ended) { state.pollTimer = setTimeout(tick, every); }
        if ($('banner').textContent.indexOf('exam server') >= 0) { banner(''); }
      }, function (err) {
        if (err.status === 401) { showLogin(); return; }
        banner('Cannot reach the exam server (' + err.message + '); retrying…', true);
        state.pollTimer = setTimeout(tick, every * 2);
      });
    }, every);
  }

  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.pollTimer = 0;
  }

  function showIntro() {
    var ex = state.exam;
    $('intro-title').textContent = ex.title;
    var mins = Math.round(ex.duration_seconds / 60);
    $('intro-meta').textContent = 'Time allowed: ' + (mins >= 60 ? Math.floor(mins / 60) + ' h ' + pad(mins % 60) + ' min' : mins + ' min') +
      ' · ' + ex.tasks.length + ' tasks';
    $('intro-nodes').textContent = ex.nodes.join(', ');
    var list = $('intro-tasks');
    list.textContent = '';
    ex.tasks.forEach(function (t) {
      list.appendChild(el('li', {}, t.title + (t.points ? ' (' + t.points + ' points)' : '')));
    });
    show('intro');
  }

  $('start-exam').addEventListener('click', function () {
    var btn = $('start-exam');
    btn.disabled = true;
    $('start-error').hidden = true;
    api('POST', '/api/session/' + state.session.id + '/start').then(enter, function (err) {
      $('start-error').textContent = err.message;
      $('start-error').hidden = false;
    }).then(function () { btn.disabled = false; });
  });

  function showProvisioning(view) {
    renderNodes(view.nodes);
    renderQueue(view);
    show('provision');
  }

  // renderQueue tells a queued candidate their place in line and, when the
  // server has one, about how long until their lab starts; once the lab is
  // being prepared the view reads as it always did.
  function renderQueue(view) {
    var note = $('provision-note');
    var title = document.querySelector('#view-provision h1');
    var queued = view.status === 'queued';
    [note, title].forEach(function (e) {
      if (!e.hasAttribute('data-default')) { e.setAttribute('data-default', e.textContent); }
    });
    title.textContent = queued ? 'Waiting for a free lab' : title.getAttribute('data-default');
    $('node-progress').hidden = queued;
    if (!queued) {
      note.textContent = note.getAttribute('data-default');
      return;
    }
    var n = view.queue_position;
    var text = n === 1 ? 'You are next in line' : (n ? 'You are number ' + n + ' in line' : 'You are in line');
    if (typeof view.estimate_seconds === 'number') {
      var m = view.estimate_seconds < 60 ? 0 : Math.round(view.estimate_seconds / 60);
      text += m < 1 ? '; less than a minute' :
        '; about ' + (m === 1 ? '1 minute' : m < 90 ? m + ' minutes' : Math.round(m / 60) + ' hours');
    }
    note.textContent = text + '. Your lab starts as soon as one is free, and your time starts only when it is ready. ' +
      'This page updates by itself.';
  }

  function renderNodes(nodes) {
    var byName = {};
    (nodes || []).forEach(function (n) { byName[n.name] = n; });
    var list = $('node-progress');
    list.textContent = '';
    state.exam.nodes.forEach(function (name) {
      var n = byName[name] || { state: 'pending' };
      var li = el('li', { 'data-node': name, 'data-state': n.state });
      var left = el('span');
      left.appendChild(el('span', { class: 'node-name' }, name));
      if (n.detail) { left.appendChild(el('span', { class: 'node-detail' }, n.detail)); }
      li.appendChild(left);
      li.appendChild(el('span', { class: 'state ' + n.state }, n.state === 'running' ? 'ready' : n.state));
      list.appendChild(li);
    });
  }

  function showDone(view) {
    endWork();
    var title = 'Exam submitted';
    var text = 'Your exam has been submitted. Your answers and your lab were saved for review. You can close this window.';
    if (view.status === 'expired') {
      title = 'Time is up';
      text = 'The time for this exam ran out and your work was submitted automatically. Your answers and your lab were saved for review.';
    }
    $('done-title').textContent = title;
    $('done-text').textContent = text;
    $('done-meta').textContent = view.submitted_at ? 'Submitted ' + fmtTime(view.submitted_at) + '.' : '';
    $('done-again').hidden = true;
    try {
      sessionStorage.setItem(DONE_KEY, JSON.stringify({ title: title, text: text, meta: $('done-meta').textContent }));
    } catch (e) { /* storage off: the server's answer is all there is */ }
    show('done');
  }

  function showRememberedDone() {
    var done = null;
    try { done = JSON.parse(sessionStorage.getItem(DONE_KEY) || 'null'); } catch (e) { done = null; }
    if (!done) { return false; }
    $('done-title').textContent = done.title;
    $('done-text').textContent = done.text;
    $('done-meta').textContent = done.meta;
    $('done-again').hidden = false;
    show('done');
    return true;
  }

  $('done-again').addEventListener('click', function () {
    try { sessionStorage.removeItem(DONE_KEY); } catch (e) { /* nothing to forget */ }
    showLogin();
  });

  // endWork stops everything that only makes sense while the exam is open.
  function endWork() {
    state.ended = true;
    stopPolling();
    closeTerminals();
    clearInterval(state.clockTimer);
    $('clock').hidden = true;
    $('submit-open').hidden = true;
    $('confirm').hidden = true;
  }

  // ---- clock -------------------------------------------------------------

  function syncClock(view) {
    if (view.server_time) {
      state.skew = Date.parse(view.server_time) - Date.now();
    }
    clearInterval(state.clockTimer);
    if (!view.deadline || (view.status !== 'ready' && view.status !== 'provisioning')) {
      $('clock').hidden = true;
      return;
    }
    // A lab lost with its host: the clock stands at what was left when it
    // stopped, and the candidate is told why; the time comes back to them.
    if (view.paused) {
      state.pausedShown = true;
      banner(view.error || 'Your lab is unavailable at the moment; your time is paused.', true);
      $('clock').hidden = false;
      showLeft(view.remaining_seconds || 0);
      $('clock').classList.add('paused');
      $('clock-value').textContent += ' (paused)';
      return;
    }
    $('clock').classList.remove('paused');
    if (state.pausedShown) {
      state.pausedShown = false;
      banner('Your lab is back; the time it was unavailable has been added to your clock.');
    }
    $('clock').hidden = false;
    tickClock();
    state.clockTimer = setInterval(tickClock, 1000);
  }

  function showLeft(left) {
    var h = Math.floor(left / 3600), m = Math.floor(left % 3600 / 60), s = left % 60;
    $('clock-value').textContent = h + ':' + pad(m) + ':' + pad(s);
  }

  function tickClock() {
    var left = Math.max(0, Math.floor((Date.parse(state.session.deadline) - (Date.now() + state.skew)) / 1000));
    showLeft(left);
    $('clock').classList.toggle('low', left > 0 && left <= LOW_TIME_S);
    $('clock').classList.toggle('out', left === 0);
    if (left === 0 && !state.timeUp) {
      state.timeUp = true;
      banner('Time is up. Your work is being submitted.', true);
      flushSaves();
      poll(POLL_PROVISIONING_MS * 2);
    }
  }

  // ---- tasks and answers -------------------------------------------------

  function showWork() {
    state.ended = false;
    show('work');
    $('submit-open').hidden = false;
    if (!state.workBuilt) {
      state.workBuilt = true;
      buildTasks();
      buildTerminals();
      loadAnswers();
      loadChecks();
    }
    activate(state.active || state.exam.nodes[0]);
  }

  function buildTasks() {
    var box = $('tasks');
    box.textContent = '';
    state.exam.tasks.forEach(function (t, i) {
      var sec = el('section', { class: 'task', id: 'task-' + t.id });
      var head = el('div', { class: 'task-head' });
      head.appendChild(el('h3', { class: 'task-title' }, (i + 1) + '. ' + t.title));
      if (t.points) { head.appendChild(el('span', { class: 'points' }, t.points + ' points')); }
      sec.appendChild(head);
      // Prompts come from YAML blocks: single line breaks are wrapping,
      // blank lines separate paragraphs.
      sec.appendChild(el('p', { class: 'prompt' }, t.prompt.trim().replace(/([^\n])\n(?!\n)/g, '$1 ')));
      var saved = el('span', { class: 'saved', id: 'saved-' + t.id, 'aria-live': 'polite' });
      if (t.kind === 'choice') {
        var group = el('div', { class: 'choices', role: 'radiogroup', id: 'answer-' + t.id });
        t.options.forEach(function (opt, j) {
          var label = el('label');
          var input = el('input', { type: 'radio', name: 'choice-' + t.id, value: opt, id: 'answer-' + t.id + '-' + j });
          input.addEventListener('change', function () { queueSave(t.id, opt, 0); });
          label.appendChild(input);
          label.appendChild(el('span', {}, opt));
          group.appendChild(label);
        });
        sec.appendChild(group);
      } else {
        var area = el('textarea', {
          id: 'answer-' + t.id, class: t.kind === 'command' ? 'code' : '', spellcheck: t.kind === 'command' ? 'false' : 'true',
          'aria-label': 'Answer to ' + t.title
        });
        area.addEventListener('input', function () { queueSave(t.id, area.value, SAVE_DELAY_MS); });
        area.addEventListener('blur', function () { if (state.saves[t.id] && state.saves[t.id].timer) { queueSave(t.id, area.value, 0); } });
        sec.appendChild(area);
      }
      sec.appendChild(saved);
      box.appendChild(sec);
    });
  }

  // "Check my work": a button per task that has checks, when the exam
  // allows it. The answer names the visible checks and whether each
  // passed, and how many runs are left; it never holds a command.
  function loadChecks() {
    api('GET', '/api/session/' + state.session.id + '/checks').then(function (res) {
      if (!res || !res.enabled) { return; }
      Object.keys(res.remaining).forEach(function (taskId) {
        var sec = $('task-' + taskId);
        if (!sec) { return; }
        var box = el('div', { class: 'checkwork', id: 'checkwork-' + taskId });
        var btn = el('button', { type: 'button', class: 'checkwork-run', id: 'checkwork-run-' + taskId }, 'Check my work');
        var left = el('span', { class: 'checkwork-left', id: 'checkwork-left-' + taskId });
        var out = el('div', { class: 'checkwork-result', id: 'checkwork-result-' + taskId, 'aria-live': 'polite' });
        box.appendChild(btn);
        box.appendChild(left);
        box.appendChild(out);
        sec.appendChild(box);
        showChecksLeft(taskId, res.remaining[taskId], res.limit);
        btn.addEventListener('click', function () { runCheck(taskId); });
      });
    }, function () {});
  }

  function showChecksLeft(taskId, remaining, limit) {
    $('checkwork-left-' + taskId).textContent = remaining + ' of ' + limit + ' checks left';
    $('checkwork-run-' + taskId).disabled = remaining <= 0;
  }

  function runCheck(taskId) {
    var btn = $('checkwork-run-' + taskId);
    var out = $('checkwork-result-' + taskId);
    btn.disabled = true;
    out.className = 'checkwork-result busy';
    out.textContent = 'Checking…';
    api('POST', '/api/session/' + state.session.id + '/tasks/' + encodeURIComponent(taskId) + '/check').then(function (res) {
      out.textContent = '';
      out.className = 'checkwork-result ' + (res.passed ? 'pass' : 'fail');
      out.appendChild(el('strong', {}, res.passed ? 'All checks pass.' : 'Not all checks pass yet.'));
      var list = el('ul');
      res.checks.forEach(function (c) {
        list.appendChild(el('li', { class: c.passed ? 'pass' : 'fail' }, (c.passed ? '✓ ' : '✗ ') + c.name));
      });
      if (res.hidden) {
        list.appendChild(el('li', { class: res.hidden.passed === res.hidden.total ? 'pass' : 'fail' },
          'Hidden checks: ' + res.hidden.passed + ' passed of ' + res.hidden.total));
      }
      out.appendChild(list);
      showChecksLeft(taskId, res.remaining, res.limit);
    }, function (err) {
      out.className = 'checkwork-result fail';
      out.textContent = err.message;
      btn.disabled = err.status === 429;
      if (err.status === 429) { $('checkwork-left-' + taskId).textContent = 'No checks left'; }
    });
  }

  function loadAnswers() {
    api('GET', '/api/session/' + state.session.id + '/answers').then(function (res) {
      (res.answers || []).forEach(function (a) {
        var t = state.exam.tasks.filter(function (x) { return x.id === a.task_id; })[0];
        if (!t || (state.saves[t.id] && state.saves[t.id].dirty)) { return; }
        if (t.kind === 'choice') {
          t.options.forEach(function (opt, j) {
            var input = $('answer-' + t.id + '-' + j);
            if (input) { input.checked = opt === a.value; }
          });
        } else {
          $('answer-' + t.id).value = typeof a.value === 'string' ? a.value : JSON.stringify(a.value);
        }
        setSaved(t.id, 'ok', 'Saved ' + new Date(a.saved_at).toLocaleTimeString());
      });
    }, function (err) {
      banner('Your saved answers could not be loaded (' + err.message + '). Reload the page before you type.', true);
    });
  }

  function setSaved(taskId, kind, text) {
    var s = $('saved-' + taskId);
    if (!s) { return; }
    s.className = 'saved ' + kind;
    s.textContent = text;
  }

  // queueSave saves the latest value after a pause in typing. One save per
  // task is in flight at a time; a newer value waits for it.
  function queueSave(taskId, value, delay) {
    var s = state.saves[taskId] || (state.saves[taskId] = { timer: 0, inflight: null, dirty: false, value: null });
    s.value = value;
    s.dirty = true;
    setSaved(taskId, 'busy', 'Unsaved changes…');
    clearTimeout(s.timer);
    s.timer = setTimeout(function () { s.timer = 0; saveNow(taskId); }, delay);
  }

  function saveNow(taskId) {
    var s = state.saves[taskId];
    if (!s || !s.dirty || state.ended) { return Promise.resolve(); }
    if (s.inflight) { return s.inflight.then(function () { return saveNow(taskId); }); }
    var value = s.value;
    s.dirty = false;
    setSaved(taskId, 'busy', 'Saving…');
    s.inflight = api('PUT', '/api/session/' + state.session.id + '/answers/' + encodeURIComponent(taskId), { value: value })
      .then(function (a) {
        s.inflight = null;
        if (!s.dirty) { setSaved(taskId, 'ok', 'Saved ' + new Date(a.saved_at).toLocaleTimeString()); }
      }, function (err) {
        s.inflight = null;
        if (!s.dirty) { s.dirty = true; }
        if (err.status === 409) {
          setSaved(taskId, 'bad', 'Not saved: ' + err.message);
          refreshSession();
          return;
        }
        if (err.status === 401) { showLogin(); return; }
        setSaved(taskId, 'bad', 'Not saved (' + err.message + '); retrying…');
        clearTimeout(s.timer);
        s.timer = setTimeout(function () { s.timer = 0; saveNow(taskId); }, SAVE_RETRY_MS);
      });
    return s.inflight;
  }

  // flushSaves saves every pending answer now.
  function flushSaves() {
    return Promise.all(Object.keys(state.saves).map(function (id) {
      var s = state.saves[id];
      clearTimeout(s.timer);
      s.timer = 0;
      return saveNow(id);
    }));
  }

  function pendingSaves() {
    return Object.keys(state.saves).some(function (id) { return state.saves[id].dirty || state.saves[id].inflight; });
  }

  window.addEventListener('beforeunload', function (ev) {
    if (!state.ended && pendingSaves()) {
      flushSaves();
      ev.preventDefault();
      ev.returnValue = '';
    }
  });

  function refreshSession() {
    if (!state.session) { return; }
    api('GET', '/api/session/' + state.session.id + '/status').then(enter, function (err) {
      if (err.status === 401) { showLogin(); }
    });
  }

  // ---- submit ------------------------------------------------------------

  $('submit-open').addEventListener('click', function () {
    $('confirm-error').hidden = true;
    $('confirm-unsaved').hidden = !pendingSaves();
    $('confirm').hidden = false;
    $('confirm-cancel').focus();
  });

  $('confirm-cancel').addEventListener('click', function () { $('confirm').hidden = true; });

  document.addEventListener('keydown', function (ev) {
    if (ev.key === 'Escape' && !$('confirm').hidden) { $('confirm').hidden = true; }
  });

  $('confirm-submit').addEventListener('click', function () {
    var btn = $('confirm-submit');
    btn.disabled = true;
    flushSaves().then(function () {
      if (pendingSaves()) { throw new Error('some answers could not be saved; check the tasks marked “Not saved”'); }
      return api('POST', '/api/session/' + state.session.id + '/submit');
    }).then(function (view) {
      showDone(view);
    }, function (err) {
      if (err.status === 409) { refreshSession(); return; }
      $('confirm-error').textContent = 'Not submitted: ' + err.message;
      $('confirm-error').hidden = false;
    }).then(function () { btn.disabled = false; });
  });

  // ---- terminals ---------------------------------------------------------

  var fitAddon = (window.TerminalAddons && window.TerminalAddons.fit) || window.fit;
  if (window.Terminal && fitAddon) { window.Terminal.applyAddon(fitAddon); }

  function buildTerminals() {
    var tabs = $('tabs'), panes = $('panes');
    tabs.textContent = '';
    panes.textContent = '';
    state.exam.nodes.forEach(function (node) {
      var tab = el('button', { type: 'button', class: 'tab', role: 'tab', 'aria-selected': 'false', 'data-node': node, id: 'tab-' + node });
      var dot = el('span', { class: 'dot' });
      tab.appendChild(dot);
      tab.appendChild(document.createTextNode(node));
      tab.addEventListener('click', function () { activate(node); });
      tabs.appendChild(tab);

      var pane = el('div', { class: 'pane', role: 'tabpanel', 'data-node': node, 'data-state': 'idle', 'aria-labelledby': 'tab-' + node });
      pane.hidden = true;
      var status = el('div', { class: 'pane-status' });
      var msg = el('span', { class: 'pane-msg' }, 'Not connected');
      var again = el('button', { type: 'button', class: 'btn btn-small' }, 'Reconnect');
      again.hidden = true;
      status.appendChild(msg);
      status.appendChild(again);
      var box = el('div', { class: 'term' });
      pane.appendChild(status);
      pane.appendChild(box);
      panes.appendChild(pane);
      var tv = { node: node, tab: tab, dot: dot, pane: pane, msg: msg, again: again, box: box, term: null, ws: null, decoder: null, retries: 0, timer: 0, closedByUs: false };
      again.addEventListener('click', function () { connect(tv); tv.term && tv.term.focus(); });
      state.terms[node] = tv;
    });
    if (!window.Terminal) {
      banner('The terminal component (xterm.js) is missing from this server build, so the terminals cannot open. Please tell the proctor (the server needs `make web`).', true);
    }
  }

  function activate(node) {
    state.active = node;
    Object.keys(state.terms).forEach(function (n) {
      var tv = state.terms[n];
      var on = n === node;
      tv.tab.setAttribute('aria-selected', on ? 'true' : 'false');
      tv.pane.hidden = !on;
    });
    var tv = state.terms[node];
    if (!tv) { return; }
    if (!window.Terminal) {
      tv.box.textContent = '';
      tv.box.appendChild(el('p', { class: 'pane-notice' }, 'The terminal component is missing from this server build. Your answers still save; ask the proctor to rebuild the server with `make web`.'));
      return;
    }
    if (!tv.term) { openTerminal(tv); }
    if (!tv.ws && !tv.timer && tv.pane.getAttribute('data-state') === 'idle') { connect(tv); }
    fitTerm(tv);
    tv.term.focus();
  }

  function openTerminal(tv) {
    var term = new window.Terminal({
      cursorBlink: true,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo, monospace',
      fontSize: 14,
      scrollback: 5000,
      // The DOM renderer keeps the screen as text in the page: selectable,
      // readable by screen readers and by the page's tests.
      rendererType: 'dom',
      theme: { background: '#15191f', foreground: '#e6e9ef', cursor: '#e6e9ef' }
    });
    term.open(tv.box);
    var enc = new TextEncoder();
    term.on('data', function (data) {
      if (tv.ws && tv.ws.readyState === WebSocket.OPEN) {
        tv.ws.send(enc.encode(data));
      } else if (tv.pane.getAttribute('data-state') === 'idle' ||
          (tv.pane.getAttribute('data-state') === 'ended' && data.indexOf('\r') >= 0)) {
        connect(tv);
      }
    });
    term.on('resize', function (size) { sendControl(tv, { type: 'resize', rows: size.rows, cols: size.cols }); });
    tv.term = term;
  }

  function fitTerm(tv) {
    if (tv && tv.term && typeof tv.term.fit === 'function' && !tv.pane.hidden) {
      try { tv.term.fit(); } catch (e) { /* not laid out yet */ }
    }
  }

  function refit() { fitTerm(state.terms[state.active]); }

  var resizeTimer = 0;
  window.addEventListener('resize', function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(refit, 120);
  });

  function sendControl(tv, msg) {
    if (tv.ws && tv.ws.readyState === WebSocket.OPEN) { tv.ws.send(JSON.stringify(msg)); }
  }

  function setTermState(tv, st, text, offerReconnect) {
    tv.pane.setAttribute('data-state', st);
    tv.dot.className = 'dot ' + (st === 'connected' ? 'connected' : st === 'connecting' || st === 'waiting' ? 'connecting' : st === 'idle' ? '' : 'closed');
    tv.msg.textContent = text;
    tv.again.hidden = !offerReconnect;
  }

  function connect(tv) {
    if (state.ended || !state.session) { return; }
    clearTimeout(tv.timer);
    tv.timer = 0;
    if (tv.ws) {
      tv.closedByUs = true;
      tv.ws.close();
    }
    var proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    var q = tv.term ? '?rows=' + tv.term.rows + '&cols=' + tv.term.cols : '';
    var ws = new WebSocket(proto + '//' + location.host + '/ws/session/' + encodeURIComponent(state.session.id) + '/terminal/' + encodeURIComponent(tv.node) + q);
    ws.binaryType = 'arraybuffer';
    tv.ws = ws;
    tv.closedByUs = false;
    setTermState(tv, 'connecting', 'Connecting…', false);
    ws.onmessage = function (ev) {
      if (tv.ws !== ws) { return; }
      if (typeof ev.data !== 'string') {
        tv.term.write(tv.decoder.decode(new Uint8Array(ev.data), { stream: true }));
        return;
      }
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      switch (msg.type) {
        case 'ready':
          tv.retries = 0;
          tv.decoder = new TextDecoder();
          // A reattach replays recent output next; start from a clean screen.
          if (msg.reattached) { tv.term.reset(); }
          setTermState(tv, 'connected', msg.reattached ? 'Connected (resumed your shell)' : 'Connected', false);
          fitTerm(tv);
          sendControl(tv, { type: 'resize', rows: tv.term.rows, cols: tv.term.cols });
          break;
        case 'status':
          if (msg.state === 'waiting') { setTermState(tv, 'waiting', msg.message, false); }
          break;
        case 'exit':
          tv.exitMessage = msg.message;
          break;
      }
    };
    ws.onclose = function (ev) {
      if (tv.ws !== ws) { return; }
      tv.ws = null;
      if (tv.closedByUs || state.ended) { setTermState(tv, 'idle', 'Closed', false); return; }
      closed(tv, ev.code, ev.reason || tv.exitMessage || '');
      tv.exitMessage = '';
    };
  }

  // closed explains why a terminal closed and decides whether to reconnect.
  function closed(tv, code, reason) {
    switch (code) {
      case 1000:
        setTermState(tv, 'ended', 'The shell has ended (' + reason + '). Press Enter for a new shell.', true);
        return;
      case 4401:
        refreshSession();
        setTermState(tv, 'closed', 'Your sign-in has expired. Sign in again.', false);
        return;
      case 4403:
      case 4404:
      case 4429:
        setTermState(tv, 'closed', 'Refused: ' + reason, true);
        return;
      case 4408:
        // Back to idle: opening the tab or typing reconnects, and within
        // the relay's grace period that resumes the same shell.
        setTermState(tv, 'idle', 'Closed after a long time without typing; type or click Reconnect to continue.', true);
        return;
      case 4409:
        setTermState(tv, 'closed', 'This terminal is open in another window.', true);
        return;
      case 4410:
        setTermState(tv, 'closed', reason || 'The session has ended.', false);
        if (reason.indexOf('lab') >= 0) {
          banner('Your lab is not reachable: ' + reason + '. Your answers are safe; please tell the proctor.', true);
        }
        refreshSession();
        return;
    }
    // Anything else (a network blip, a relay restart) is worth retrying:
    // the relay keeps the shell for a while and replays it on return.
    var delay = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * Math.pow(2, tv.retries));
    tv.retries++;
    setTermState(tv, 'connecting', 'Connection lost' + (reason ? ' (' + reason + ')' : '') + '; reconnecting in ' + Math.round(delay / 1000) + ' s…', true);
    tv.timer = setTimeout(function () { tv.timer = 0; connect(tv); }, delay);
  }

  function closeTerminals() {
    Object.keys(state.terms).forEach(function (n) {
      var tv = state.terms[n];
      clearTimeout(tv.timer);
      tv.timer = 0;
      if (tv.ws) {
        tv.closedByUs = true;
        tv.ws.close();
        tv.ws = null;
      }
      if (tv.term) { setTermState(tv, 'idle', 'Closed', false); }
    });
  }

  boot();
})();
