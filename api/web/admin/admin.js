// The admin panel. Every value comes from /api/admin/* and is written with
// textContent, never as HTML, so nothing a candidate typed can run here.
"use strict";

(function () {
  var STATES = ["created", "queued", "provisioning", "ready", "submitted", "archiving", "completed", "failed", "expired"];
  var $ = function (id) { return document.getElementById(id); };

  // api calls the admin API with a JSON body, or with o.contentType a body
  // sent as it is (a file); it answers the JSON, or with o.blob the body.
  // A refusal throws its reason, with the whole answer as .data.
  function api(method, path, body, o) {
    o = o || {};
    var opts = { method: method, credentials: "same-origin", headers: {} };
    if (o.contentType) {
      opts.headers["Content-Type"] = o.contentType;
      opts.body = body;
    } else if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (r) {
      if (r.ok && o.blob) return r.blob();
      return r.text().then(function (t) {
        var data = null;
        try { data = t ? JSON.parse(t) : null; } catch (e) { data = null; }
        if (r.status === 401 || r.status === 403) { showLogin(); throw new Error("admin sign-in required"); }
        if (!r.ok) {
          var err = new Error((data && data.error) || r.status + " " + r.statusText);
          err.data = data;
          throw err;
        }
        return data;
      });
    });
  }

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function row(cells) {
    var tr = document.createElement("tr");
    cells.forEach(function (c) {
      var td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === undefined || c === null ? "" : String(c);
      tr.appendChild(td);
    });
    return tr;
  }
  function badge(status) { return el("span", status, "badge " + status); }
  // labTrouble says what is wrong with a ready session's lab while its
  // clock is paused: lost or unknown, since when, why, and whether a
  // fresh lab is being made.
  function labTrouble(t) {
    if (!t || !t.state) return "";
    var s = t.state + " since " + when(t.since) + ": the candidate's clock is paused. " + (t.reason || "");
    if (t.reprovision) s += " A fresh lab is being made (asked " + when(t.reprovision) + ").";
    return s;
  }
  function when(t) {
    if (!t || t.indexOf("0001-") === 0) return "";
    var d = new Date(t);
    return isNaN(d) ? t : d.toLocaleString();
  }
  function size(n) {
    if (n < 1024) return n + " B";
    var u = ["KiB", "MiB", "GiB"], i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
    return n.toFixed(1) + " " + u[i];
  }
  function show(section) {
    ["login", "list", "session", "sittings", "sitting", "queue"].forEach(function (s) { $(s).hidden = s !== section; });
    $("logout").hidden = section === "login";
  }

  // ---- sign-in ----
  function showLogin() { show("login"); $("login-token").focus(); }
  $("login-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    $("login-error").textContent = "";
    fetch("/api/admin/login", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("login-token").value })
    }).then(function (r) {
      if (!r.ok) { $("login-error").textContent = r.status === 429 ? "Too many attempts; wait a minute." : "Wrong admin token."; return; }
      $("login-token").value = "";
      route();
    });
  });
  $("logout").addEventListener("click", function () {
    fetch("/api/admin/logout", { method: "POST", credentials: "same-origin" }).then(showLogin);
  });

  // ---- sessions list ----
  STATES.forEach(function (s) { $("f-status").appendChild(el("option", s)); });
  var listState = { page: 1 };

  function readFilters() {
    var q = new URLSearchParams(location.search);
    $("f-status").value = q.get("status") || "";
    $("f-search").value = q.get("q") || "";
    $("f-sort").value = q.get("sort") || "created";
    $("f-order").value = q.get("order") || "desc";
    $("f-per").value = q.get("per_page") || "50";
    $("f-smin").value = q.get("score_min") || "";
    $("f-smax").value = q.get("score_max") || "";
    $("f-passed").value = q.get("passed") || "";
    $("f-pass").value = q.get("pass_mark") || "";
    listState.page = Math.max(1, parseInt(q.get("page") || "1", 10) || 1);
  }
  function filterQuery(page) {
    var q = new URLSearchParams();
    if ($("f-status").value) q.set("status", $("f-status").value);
    if ($("f-search").value.trim()) q.set("q", $("f-search").value.trim());
    q.set("sort", $("f-sort").value);
    q.set("order", $("f-order").value);
    q.set("per_page", $("f-per").value);
    if ($("f-smin").value !== "") q.set("score_min", $("f-smin").value);
    if ($("f-smax").value !== "") q.set("score_max", $("f-smax").value);
    if ($("f-passed").value) {
      q.set("passed", $("f-passed").value);
      if ($("f-pass").value !== "") q.set("pass_mark", $("f-pass").value);
    }
    q.set("page", String(page));
    return q;
  }
  function goList(page) {
    history.pushState(null, "", "/admin?" + filterQuery(page).toString());
    loadList();
  }
  function loadList() {
    show("list");
    readFilters();
    var q = filterQuery(listState.page);
    $("list-summary").textContent = "Loading…";
    loadLeftovers();
    api("GET", "/api/admin/sessions?" + q.toString()).then(function (res) {
      var tbody = $("sessions").querySelector("tbody");
      tbody.textContent = "";
      res.sessions.forEach(function (s) {
        var score = s.score === undefined || s.score === null ? "" : s.score + " / " + s.max_score;
        var st = badge(s.status);
        if (s.lab_state) { st = el("span"); st.appendChild(badge(s.status)); st.appendChild(document.createTextNode(" ")); st.appendChild(badge("lab " + s.lab_state)); }
        var tr = row([el("code", s.id), s.email, st, score, evidenceCell(s.evidence), when(s.created_at), when(s.updated_at), when(s.deadline)]);
        tr.className = "row";
        tr.dataset.id = s.id;
        tr.addEventListener("click", function () { goSession(s.id); });
        tbody.appendChild(tr);
      });
      var pages = Math.max(1, Math.ceil(res.total / res.per_page));
      $("list-summary").textContent = res.total + " session" + (res.total === 1 ? "" : "s");
      $("page-info").textContent = "page " + res.page + " of " + pages;
      $("prev").disabled = res.page <= 1;
      $("next").disabled = res.page >= pages;
    }).catch(function (e) { $("list-summary").textContent = e.message; });
  }
  // ---- leftovers: parts of ended labs the runtime still keeps ----
  function leftoverCells(l) {
    return [l.kind, el("code", l.name), l.subnet || "", when(l.first_seen), String(l.attempts), l.last_error || ""];
  }
  function loadLeftovers() {
    api("GET", "/api/admin/leftovers").then(function (res) {
      var list = res.leftovers || [];
      $("leftovers").hidden = list.length === 0;
      $("leftover-count").textContent = String(list.length);
      var tbody = $("leftover-list").querySelector("tbody");
      tbody.textContent = "";
      list.forEach(function (l) {
        var tr = row([el("code", l.session_id)].concat(leftoverCells(l)));
        tr.className = "row";
        tr.addEventListener("click", function () { goSession(l.session_id); });
        tbody.appendChild(tr);
      });
    }).catch(function () { $("leftovers").hidden = true; });
  }
  // ---- evidence: the seal of a session's files ----
  var EVIDENCE_LABELS = { verified: "verified", failed: "FAILED", unchecked: "changed, not checked", unsealed: "not sealed yet" };
  function evidenceBadge(ev) {
    var st = (ev && ev.state) || "unsealed";
    return el("span", EVIDENCE_LABELS[st] || st, "badge ev-" + st);
  }
  function evidenceCell(ev) {
    var b = evidenceBadge(ev);
    if (ev && ev.problems && ev.problems.length) b.title = ev.problems.join("\n");
    return b;
  }
  function renderEvidence(ev) {
    ev = ev || { state: "unsealed" };
    var b = evidenceBadge(ev);
    $("ev-badge").textContent = b.textContent;
    $("ev-badge").className = b.className;
    var text = {
      verified: "Every file matches the signed manifest.",
      failed: "The files do not match the signed manifest; the platform will not sign this folder again.",
      unchecked: "A file changed on disk since the files were last hashed; verify to hash them.",
      unsealed: "The session's files are sealed when it completes."
    }[ev.state] || "";
    if (ev.sealed_at) text += " Sealed " + when(ev.sealed_at) + (ev.files ? ", " + ev.files + " files" : "") + ".";
    if (ev.checked_at) text += " Checked " + when(ev.checked_at) + ".";
    if (ev.key) text += " Key " + ev.key + ".";
    $("ev-summary").textContent = text;
    var ul = $("ev-problems");
    ul.textContent = "";
    (ev.problems || []).forEach(function (p) { ul.appendChild(el("li", p)); });
  }
  $("ev-verify").addEventListener("click", function () {
    if (!current) return;
    var id = current.session.id;
    $("ev-verify").disabled = true;
    message("Hashing every file of the session…");
    api("POST", "/api/admin/session/" + encodeURIComponent(id) + "/verify").then(function (ev) {
      renderEvidence(ev);
      message(ev.state === "failed" ? "Verification failed." : "Verified: " + (EVIDENCE_LABELS[ev.state] || ev.state) + ".", ev.state === "failed");
    }).catch(function (e) { message(e.message, true); }).then(function () { $("ev-verify").disabled = false; });
  });

  $("filters").addEventListener("submit", function (ev) { ev.preventDefault(); goList(1); });
  $("f-status").addEventListener("change", function () { goList(1); });
  $("prev").addEventListener("click", function () { goList(listState.page - 1); });
  $("next").addEventListener("click", function () { goList(listState.page + 1); });

  // ---- one session ----
  var current = null, player = null, live = null, refreshTimer = null, recordings = {}, review = null;

  function goSession(id) {
    history.pushState(null, "", "/admin/session/" + encodeURIComponent(id));
    route();
  }
  function message(text, isError) {
    $("s-message").textContent = text;
    $("s-message").className = isError ? "error" : "notice";
  }

  function loadSession(id, quiet) {
    show("session");
    return api("GET", "/api/admin/session/" + encodeURIComponent(id) + "/details").then(function (d) {
      current = d;
      renderSession(d, quiet);
      if (!quiet) review.load(id);
    }).catch(function (e) { message(e.message, true); });
  }

  function renderSession(d, quiet) {
    var s = d.session, m = d.metadata || {};
    $("s-id").textContent = s.id;
    var b = $("s-status");
    b.textContent = s.status;
    b.className = "badge " + s.status;
    var facts = $("s-facts");
    facts.textContent = "";
    [["Email", s.email], ["Exam", s.exam_id], ["Created", when(s.created_at)], ["Started", when(s.started_at)],
     ["Lab ready", when(s.ready_at)], ["Deadline", when(s.deadline)], ["Time allowed", Math.round(s.duration_seconds / 60) + " min"],
     ["Remaining", s.remaining_seconds ? Math.floor(s.remaining_seconds / 60) + " min " + (s.remaining_seconds % 60) + " s" : ""],
     ["Submitted", when(s.submitted_at) + (m.submit_reason ? " (" + m.submit_reason + ")" : "")], ["Completed", when(s.completed_at)],
      ["Runtime", m.runtime],
      ["Lab id", d.lab && d.lab.from_warm_pool ? d.lab.lab_id + " (from the warm pool; containers " + d.lab.containers + ")" : ""],
      ["Parked", m.parking ? (m.parking.reason === "unavailable" ? "the lab runtime cannot be reached" : "no room for the lab") +
        " since " + when(m.parking.at) + "; back in line at its place, resumes by itself" : ""],
      ["Error", s.error], ["Lab", labTrouble(m.lab_trouble)],
      ["Time credited", m.lab_trouble && m.lab_trouble.credited_seconds ? m.lab_trouble.credited_seconds + " s (lab unusable)" : ""]].forEach(function (f) {
      if (!f[1]) return;
      facts.appendChild(el("dt", f[0]));
      facts.appendChild(el("dd", f[1]));
    });

    $("lost-actions").hidden = s.status !== "ready";

    var nodes = $("s-nodes").querySelector("tbody");
    nodes.textContent = "";
    var sel = $("node-select"), keep = sel.value;
    sel.textContent = "";
    (d.nodes || []).forEach(function (n) {
      nodes.appendChild(row([n.name, el("code", n.container), badge(n.state), n.detail || ""]));
      sel.appendChild(el("option", n.name));
    });
    if (keep) sel.value = keep;

    var kept = d.leftovers || [];
    $("s-leftovers").hidden = kept.length === 0;
    var lbody = $("s-leftovers").querySelector("tbody");
    lbody.textContent = "";
    kept.forEach(function (l) { lbody.appendChild(row(leftoverCells(l))); });

    var answers = $("s-answers").querySelector("tbody");
    answers.textContent = "";
    (d.answers || []).forEach(function (a) {
      var v = a.value;
      var shown = typeof v === "string" ? v : JSON.stringify(v, null, 2);
      answers.appendChild(row([a.task_id, el("pre", shown), when(a.saved_at), a.revision]));
    });
    if (!(d.answers || []).length) answers.appendChild(row(["no answers saved"]));

    var hist = $("s-history");
    hist.textContent = "";
    Object.keys(d.terminal_logs || {}).sort().forEach(function (node) {
      hist.appendChild(el("h4", node));
      var ol = el("ol", null, "history");
      d.terminal_logs[node].entries.forEach(function (e) {
        var li = el("li", e.command);
        li.title = when(e.at) + " (" + e.source + ")";
        ol.appendChild(li);
      });
      hist.appendChild(ol);
    });

    var recSel = $("rec-select"), keepRec = recSel.value;
    recSel.textContent = "";
    recordings = {};
    (d.terminal_files || []).forEach(function (f) {
      if (!/\.cast$/.test(f.name)) return;
      recordings[f.name] = f;
      recSel.appendChild(el("option", f.name.replace(/\.cast$/, "") + " (" + size(f.size) + ")")).value = f.name;
    });
    if (keepRec && recordings[keepRec]) recSel.value = keepRec;
    if (!quiet && recSel.value) loadRecording(recSel.value);

    var snaps = $("s-snapshots").querySelector("tbody");
    snaps.textContent = "";
    (d.snapshots || []).forEach(function (f) {
      var a = el("a", "Download");
      a.href = "/api/admin/session/" + encodeURIComponent(s.id) + "/files/snapshots/" + encodeURIComponent(f.name);
      a.setAttribute("download", f.name);
      a.className = "download";
      var tr = row([f.name, size(f.size), el("code", f.sha256 || (f.name === "manifest.json" ? "(the manifest)" : "")), a]);
      tr.dataset.file = f.name;
      snaps.appendChild(tr);
    });
    if (!(d.snapshots || []).length) snaps.appendChild(row(["no snapshot yet"]));

    renderGrading(d);
    renderEvidence(d.evidence);

    var audit = $("s-audit").querySelector("tbody");
    audit.textContent = "";
    (d.audit || []).slice().reverse().forEach(function (e) {
      audit.appendChild(row([when(e.at), e.actor, e.action, e.detail ? JSON.stringify(e.detail) : ""]));
    });

    clearTimeout(refreshTimer);
    // Live states while the session waits or a lab may be up; a finished session stays still.
    if (["queued", "provisioning", "ready", "submitted", "archiving"].indexOf(s.status) >= 0) {
      refreshTimer = setTimeout(function () { if (current && current.session.id === s.id) loadSession(s.id, true); }, 5000);
    }
  }

  // ---- grading ----
  function renderGrading(d) {
    var g = d.grading || {};
    var res = g.results;
    $("g-score").textContent = g.score ? g.score.score + " / " + g.score.max_score + (g.pass_mark ? " (pass mark " + g.pass_mark + ")" : "") : "";
    $("g-summary").textContent = res
      ? "Graded " + when(res.graded_at) + " on " + res.trigger + ", exam version " + res.exam_version + ", in " + (res.duration_ms / 1000).toFixed(1) + " s" +
        ((g.history || []).length > 1 ? "; " + (g.history.length - 1) + " earlier grading(s) kept" : "")
      : "Not graded yet.";
    $("regrade").disabled = !g.gradable;
    var tbody = $("g-checks").querySelector("tbody");
    tbody.textContent = "";
    ((res && res.tasks) || []).forEach(function (t) {
      if (!t.checks) {
        tbody.appendChild(row([t.id, t.manual ? "(marked by hand)" : "(choice: " + (t.answer || "no answer") + ")", "", "", t.manual ? "" : t.points + " / " + t.max_points, "", "", ""]));
        return;
      }
      t.checks.forEach(function (c) {
        var out = el("pre", (c.output || "") + (c.truncated ? "\n[cut at 4 KiB]" : "") + (c.error ? "\n[" + c.error + "]" : ""));
        var tr = row([t.id, c.name + (c.hidden ? " (hidden)" : ""), c.node, c.passed ? "yes" : (c.timed_out ? "timed out" : "no"),
          c.points + " / " + c.max_points, String(c.exit_code), out, c.duration_ms + " ms"]);
        tr.className = c.passed ? "pass" : "fail";
        tbody.appendChild(tr);
      });
    });
    var manual = $("g-manual").querySelector("tbody");
    manual.textContent = "";
    (g.manual || []).forEach(function (t) {
      var mark = (g.marks || {})[t.id] || {};
      var pts = document.createElement("input");
      pts.type = "number"; pts.min = "0"; pts.max = String(t.points); pts.step = "1"; pts.className = "short";
      pts.id = "mark-points-" + t.id;
      if (mark.points !== undefined) pts.value = String(mark.points);
      var note = document.createElement("input");
      note.maxLength = 4096; note.id = "mark-note-" + t.id; note.value = mark.note || "";
      var save = el("button", "Save mark");
      save.type = "button";
      save.addEventListener("click", function () {
        var id = current.session.id;
        message("Working…");
        api("PUT", "/api/admin/session/" + encodeURIComponent(id) + "/marks/" + encodeURIComponent(t.id),
          { points: parseInt(pts.value, 10), note: note.value }).then(function () {
          message("Mark saved for " + t.id + ".");
          loadSession(id, true);
        }).catch(function (e) { message(e.message, true); });
      });
      var label = el("span", t.id + " (of " + t.points + ")");
      if (mark.by) label.title = "by " + mark.by + " " + when(mark.at);
      manual.appendChild(row([label, pts, note, save]));
    });
    if (!(g.manual || []).length) manual.appendChild(row(["no task of this exam is marked by hand"]));
  }

  // ---- recordings ----
  function playerUpdate(p) {
    $("seek").max = String(p.duration);
    if (document.activeElement !== $("seek")) $("seek").value = String(p.pos);
    $("rec-time").textContent = p.pos.toFixed(1) + " / " + p.duration.toFixed(1) + " s";
    $("rec-state").textContent = p.playing ? "playing" : (p.finished() && p.duration > 0 ? "finished" : "paused");
    $("rec-state").dataset.state = $("rec-state").textContent;
  }
  function loadRecording(name) {
    if (!player) player = new window.ExamlabPlayer($("player-screen"), playerUpdate);
    $("rec-state").textContent = "loading";
    fetch("/api/admin/session/" + encodeURIComponent(current.session.id) + "/files/terminal-logs/" + encodeURIComponent(name), { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("recording: " + r.status); return r.text(); })
      .then(function (text) { player.load(text); player.setSpeed(parseFloat($("speed").value)); })
      .catch(function (e) { $("rec-state").textContent = e.message; });
  }
  $("rec-select").addEventListener("change", function () { loadRecording($("rec-select").value); });
  $("play").addEventListener("click", function () { if (player) player.play(); });
  $("pause").addEventListener("click", function () { if (player) player.pause(); });
  $("speed").addEventListener("change", function () { if (player) player.setSpeed(parseFloat($("speed").value)); });
  $("seek").addEventListener("input", function () { if (player) player.seek(parseFloat($("seek").value)); });

  // ---- actions ----
  function act(path, body, done) {
    var id = current.session.id;
    message("Working…");
    return api("POST", "/api/admin/session/" + encodeURIComponent(id) + path, body).then(function (res) {
      message(done);
      loadSession(id, true);
      return res;
    }).catch(function (e) { message(e.message, true); });
  }
  var confirmText = {
    snapshot: "Archive every node of this lab now? The lab stays up.",
    submit: "Submit this session for the candidate now? Their lab will be archived and removed.",
    cleanup: "Remove this session's lab? An open session is submitted and archived first.",
    reprovision: "Replace this lost lab with a fresh one? What remains of the old lab is removed; answers and recordings stay, and the paused time is credited once the fresh lab is ready.",
    "archive-reachable": "Submit this session and archive only the nodes that can still be reached? The missing ones are listed in the archive's manifest.",
    regrade: "Run every check again? On a live lab they run there; once the lab is gone they run in a review lab restored from the archive. The earlier results are kept."
  };
  var doneText = { reprovision: "Re-provision queued; the clock resumes when the fresh lab is ready.", "archive-reachable": "Session submitted; the reachable nodes are being archived.", snapshot: "Snapshot queued.", submit: "Session submitted; archive queued.", cleanup: "Clean-up queued.", regrade: "Regraded." };
  document.querySelectorAll("[data-action]").forEach(function (b) {
    b.addEventListener("click", function () {
      var a = b.dataset.action;
      if (!window.confirm(confirmText[a])) return;
      act("/" + a, undefined, doneText[a]).then(function (res) {
        // A regrade after the exam runs in a review lab, in a worker.
        if (res && res.in_review_lab) {
          message("Regrade queued in review lab " + res.review.id + "; its progress shows under Review lab.");
          review.load(current.session.id);
        }
      });
    });
  });
  $("extend-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var n = parseInt($("extend-minutes").value, 10);
    act("/extend", { minutes: n }, "Deadline moved by " + n + " minutes.");
  });
  $("reset-node").addEventListener("click", function () {
    var n = $("node-select").value;
    if (!n || !window.confirm("Replace " + n + " with a fresh container? Its files are lost.")) return;
    act("/nodes/" + encodeURIComponent(n) + "/reset", undefined, "Reset of " + n + " queued.");
  });

  // ---- live view ----
  function closeLive() {
    if (live) { live.onclose = null; live.close(); live = null; }
    $("live").hidden = true;
  }
  $("live-close").addEventListener("click", closeLive);
  $("watch-node").addEventListener("click", function () {
    var n = $("node-select").value;
    if (!n) return;
    act("/terminals/" + encodeURIComponent(n) + "/watch", undefined, "Watching " + n + " (read-only).").then(function (res) {
      if (!res) return;
      closeLive();
      $("live").hidden = false;
      $("live-node").textContent = n;
      $("live-state").textContent = "connecting";
      var screen = window.ExamlabScreen.create($("live-screen"), 120, 32);
      var decoder = new TextDecoder();
      var proto = location.protocol === "https:" ? "wss://" : "ws://";
      live = new WebSocket(proto + location.host + res.websocket);
      live.binaryType = "arraybuffer";
      live.onmessage = function (ev) {
        if (typeof ev.data === "string") {
          var m = {};
          try { m = JSON.parse(ev.data); } catch (e) { return; }
          if (m.type === "ready") $("live-state").textContent = "live";
          else if (m.type === "status" || m.type === "exit") $("live-state").textContent = m.message || m.type;
          return;
        }
        screen.write(decoder.decode(new Uint8Array(ev.data), { stream: true }));
      };
      live.onclose = function (ev) { $("live-state").textContent = "closed: " + (ev.reason || ev.code); };
    });
  });

  // ---- sittings and rosters (sittings.js), the admission queue (queue.js) ----
  function go(path) {
    history.pushState(null, "", path);
    route();
  }
  var helpers = { $: $, api: api, el: el, row: row, badge: badge, when: when, size: size, show: show, goSession: goSession, go: go, route: route };
  var sittings = window.ExamlabSittings.create(helpers);
  var queue = window.ExamlabQueue.create(helpers);
  review = window.ExamlabReview.create({ $: $, api: api, el: el, when: when, onRegraded: function (id) { loadSession(id, true); } });

  // ---- routing ----
  function route() {
    closeLive();
    review.close();
    if (player) player.pause();
    if (queue.route(location.pathname)) return;
    if (sittings.route(location.pathname)) return;
    var m = /^\/admin\/session\/([^/]+)\/?$/.exec(location.pathname);
    if (m) {
      message("");
      loadSession(decodeURIComponent(m[1]));
    } else {
      loadList();
    }
  }
  window.addEventListener("popstate", route);
  route();
})();
