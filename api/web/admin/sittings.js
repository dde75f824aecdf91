// The panel's sittings and rosters: list and create sittings; show one,
// with how many of its candidates wait in the admission queue, and edit or
// delete it; import a roster with a preview of every row, export it with
// new codes, and reissue, reset or remove one entry. admin.js owns sign-in
// and routing and hands in its helpers; as everywhere in the panel, values
// are written as text, never as HTML.
"use strict";

window.ExamlabSittings = {
  create: function (h) {
    var $ = h.$, api = h.api, el = h.el, row = h.row, when = h.when;
    var MAX_FILE = 10 * 1024 * 1024; // the API's limit on a roster file
    var PREVIEW_ROWS = 200, ROSTER_ROWS = 500; // rows drawn at most
    var current = null, pendingFile = null;

    function say(id, text, isError) {
      $(id).textContent = text || "";
      $(id).className = isError ? "error" : "notice";
    }
    function button(text, onClick, cls) {
      var b = el("button", text, cls);
      b.type = "button";
      b.addEventListener("click", onClick);
      return b;
    }
    function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

    // ---- times: the forms show local time, the API speaks RFC 3339 ----
    function pad(n) { return (n < 10 ? "0" : "") + n; }
    function toLocalInput(t) {
      var d = new Date(t);
      if (!t || isNaN(d)) return "";
      return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" + pad(d.getHours()) + ":" + pad(d.getMinutes());
    }
    function fromLocalInput(v) {
      var d = new Date(v); // a datetime-local value is read as local time
      return isNaN(d) ? v : d.toISOString().replace(/\.\d{3}Z$/, "Z");
    }
    (function () {
      var m = -new Date().getTimezoneOffset(), sign = m < 0 ? "-" : "+";
      m = Math.abs(m);
      var label = "(local time, UTC" + sign + pad(Math.floor(m / 60)) + ":" + pad(m % 60) + ")";
      document.querySelectorAll(".tz").forEach(function (e) { e.textContent = label; });
    })();

    // ---- the list ----
    function goSittings() {
      history.pushState(null, "", "/admin/sittings");
      loadSittings();
    }
    function goSitting(id) {
      history.pushState(null, "", "/admin/sittings/" + encodeURIComponent(id));
      loadSitting(id);
    }

    function loadSittings() {
      h.show("sittings");
      $("sittings-summary").textContent = "Loading…";
      return api("GET", "/api/admin/sittings").then(function (res) {
        var tbody = $("sittings-table").querySelector("tbody");
        tbody.textContent = "";
        res.sittings.forEach(function (s) {
          var tr = row([el("code", s.id), s.title, h.badge(s.state), when(s.opens), when(s.closes),
            s.capacity || "no limit", s.roster, s.signed_in, s.running, s.ended]);
          tr.className = "row";
          tr.dataset.id = s.id;
          tr.addEventListener("click", function () { goSitting(s.id); });
          tbody.appendChild(tr);
        });
        $("sittings-summary").textContent = plural(res.sittings.length, "sitting");
        var exams = $("c-exam");
        exams.textContent = "";
        res.exams.forEach(function (x) { exams.appendChild(el("option", x)); });
        exams.value = res.default_exam;
        if (!$("c-opens").value) {
          var start = new Date();
          start.setMinutes(0, 0, 0);
          start.setHours(start.getHours() + 1);
          $("c-opens").value = toLocalInput(start);
          $("c-closes").value = toLocalInput(new Date(start.getTime() + 4 * 3600 * 1000));
        }
      }).catch(function (e) { $("sittings-summary").textContent = e.message; });
    }

    $("create-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var body = {
        id: $("c-id").value.trim(), title: $("c-title").value.trim(),
        opens: fromLocalInput($("c-opens").value), closes: fromLocalInput($("c-closes").value),
        capacity: parseInt($("c-capacity").value, 10) || 0, open_registration: $("c-open").checked
      };
      if ($("c-exam").value) body.exam_id = $("c-exam").value;
      say("create-message", "Creating…");
      api("POST", "/api/admin/sittings", body).then(function (res) {
        $("create-form").reset();
        say("create-message", "");
        goSitting(res.sitting.id);
      }).catch(function (e) { say("create-message", e.message, true); });
    });

    // ---- one sitting ----
    function path(id) { return "/api/admin/sittings/" + encodeURIComponent(id || current.sitting.id); }

    function loadSitting(id, keepMessage) {
      h.show("sitting");
      if (!keepMessage) {
        say("t-message", "");
        $("issued").hidden = true;
        clearPreview();
      }
      return api("GET", path(id)).then(function (d) {
        current = d;
        renderSitting(d);
      }).catch(function (e) { say("t-message", e.message, true); });
    }

    function renderSitting(d) {
      var s = d.sitting;
      $("t-id").textContent = s.id;
      $("t-state").textContent = s.state;
      $("t-state").className = "badge " + s.state;
      var facts = $("t-facts");
      facts.textContent = "";
      [["Title", s.title], ["Exam", s.exam_id], ["Opens", when(s.opens)], ["Closes", when(s.closes)],
       ["Capacity", s.capacity ? s.capacity + " labs at once" : "no limit of its own"],
       ["Open registration", s.open_registration ? "yes: anyone may sign in with an email" : "no: access codes only"],
       ["Warm pool", warmFact(d.warm)],
       ["Roster", plural(s.roster, "candidate")], ["Signed in", s.signed_in], ["Labs running", s.running], ["Ended", s.ended],
       ["Created", when(s.created_at)], ["Updated", when(s.updated_at)]].forEach(function (f) {
        facts.appendChild(el("dt", f[0]));
        facts.appendChild(el("dd", f[1]));
      });
      facts.appendChild(el("dt", "Admission queue"));
      var line = el("dd");
      facts.appendChild(line);
      queueFact(s.id, line);
      $("e-title").value = s.title || "";
      $("e-opens").value = toLocalInput(s.opens);
      $("e-closes").value = toLocalInput(s.closes);
      $("e-capacity").value = String(s.capacity);
      $("e-warm").value = String(s.warm || 0);
      $("e-open").checked = !!s.open_registration;
      renderRoster();
      var audit = $("t-audit").querySelector("tbody");
      audit.textContent = "";
      (d.audit || []).slice().reverse().forEach(function (e) {
        audit.appendChild(row([when(e.at), e.actor, e.action, e.detail ? JSON.stringify(e.detail) : ""]));
      });
    }

    // warmFact says how many labs the sitting keeps ready ahead of its
    // starts, and how many are ready and being made now.
    function warmFact(w) {
      if (!w || !w.size) return "none: every start makes its lab";
      return w.size + " labs kept ready: " + w.ready + " ready, " + w.making + " being made" +
        (w.filling ? "" : " (not filling now: outside the window and its lead)");
    }

    // queueFact says how many of the sitting's candidates wait for a lab,
    // with a link to its line in the queue view, where they can be admitted
    // or removed.
    function queueFact(id, dd) {
      var a = el("a", "see its line");
      a.id = "t-queue-link";
      a.href = "/admin/queue?sitting=" + encodeURIComponent(id);
      a.addEventListener("click", function (ev) { ev.preventDefault(); h.go(a.getAttribute("href")); });
      dd.appendChild(a);
      api("GET", "/api/admin/queue").then(function (res) {
        var q = (res.sittings || []).filter(function (x) { return x.sitting_id === id; })[0];
        if (!q) return;
        dd.insertBefore(el("span", (q.queued.length ? plural(q.queued.length, "candidate") + " waiting" : "nobody waiting") + ": "), a);
      }).catch(function () { /* the link alone still leads there */ });
    }

    $("edit-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var s = current.sitting, body = {};
      // Only what the admin changed: the form holds minutes, the sitting
      // may hold seconds.
      if ($("e-title").value.trim() !== (s.title || "")) body.title = $("e-title").value.trim();
      if ($("e-opens").value !== toLocalInput(s.opens)) body.opens = fromLocalInput($("e-opens").value);
      if ($("e-closes").value !== toLocalInput(s.closes)) body.closes = fromLocalInput($("e-closes").value);
      var cap = parseInt($("e-capacity").value, 10) || 0;
      if (cap !== s.capacity) body.capacity = cap;
      var warm = parseInt($("e-warm").value, 10) || 0;
      if (warm !== (s.warm || 0)) body.warm = warm;
      if ($("e-open").checked !== !!s.open_registration) body.open_registration = $("e-open").checked;
      if (!Object.keys(body).length) { say("t-message", "Nothing to change."); return; }
      say("t-message", "Saving…");
      api("PATCH", path(), body).then(function (res) {
        say("t-message", "Saved: " + Object.keys(res.changed || {}).join(", ") + ".");
        loadSitting(s.id, true);
      }).catch(function (e) { say("t-message", e.message, true); });
    });

    $("delete-sitting").addEventListener("click", function () {
      var id = current.sitting.id;
      if (!window.confirm("Delete sitting " + id + "?\n\nEvery access code of its roster stops working at once. " +
        "It is refused while any of its candidates' sessions has not ended; the sessions keep their records.")) return;
      say("t-message", "Deleting…");
      api("DELETE", path()).then(function () { goSittings(); })
        .catch(function (e) { say("t-message", e.message, true); });
    });

    // ---- the roster ----
    function renderRoster() {
      var all = current.entries || [], q = $("roster-filter").value.trim().toLowerCase();
      var found = all.filter(function (e) {
        return !q || e.email.indexOf(q) >= 0 || e.name.toLowerCase().indexOf(q) >= 0 || (e.external_id || "").toLowerCase().indexOf(q) >= 0;
      });
      var tbody = $("roster").querySelector("tbody");
      tbody.textContent = "";
      found.slice(0, ROSTER_ROWS).forEach(function (e) {
        var sess = "";
        if (e.session_id) {
          sess = el("a", e.session_id, "mono");
          sess.href = "/admin/session/" + encodeURIComponent(e.session_id);
          sess.addEventListener("click", function (ev) { ev.preventDefault(); h.goSession(e.session_id); });
        }
        var acts = el("span", null, "row-actions");
        acts.appendChild(button("Reissue code", function () { reissue(e); }));
        if (e.session_id) acts.appendChild(button("Reset", function () { reset(e); }));
        acts.appendChild(button("Remove", function () { removeEntry(e); }, "danger"));
        var status = e.session_status ? h.badge(e.session_status) : (e.session_id ? "" : el("span", "not signed in", "muted"));
        var tr = row([e.email, e.name, e.external_id || "", sess, status, when(e.code_issued_at), acts]);
        tr.dataset.entry = e.id;
        tr.dataset.email = e.email;
        tbody.appendChild(tr);
      });
      if (!all.length) tbody.appendChild(row(["no candidates yet: import a roster above"]));
      var count = "(" + plural(all.length, "candidate");
      if (found.length > ROSTER_ROWS) count += "; showing " + ROSTER_ROWS + " of " + found.length + " found, narrow with Find";
      else if (q) count += "; " + found.length + " found";
      $("roster-count").textContent = count + ")";
      $("export").disabled = !all.length;
    }
    $("roster-filter").addEventListener("input", function () { if (current) renderRoster(); });

    function entryAction(method, e, suffix, done) {
      var id = current.sitting.id;
      say("t-message", "Working…");
      return api(method, path() + "/roster/" + encodeURIComponent(e.id) + suffix).then(function (res) {
        say("t-message", done);
        loadSitting(id, true);
        return res;
      }).catch(function (err) { say("t-message", err.message, true); });
    }
    function reissue(e) {
      if (!window.confirm("Issue " + e.email + " a new access code?\n\nTheir current code stops working at once.")) return;
      entryAction("POST", e, "/reissue", "New code issued for " + e.email + ".").then(function (res) {
        if (!res) return;
        $("issued-who").textContent = e.email;
        $("issued-code").value = res.code;
        $("issued-link").value = res.link;
        document.querySelectorAll("[data-copy]").forEach(function (b) { b.textContent = b.dataset.label; });
        $("issued").hidden = false;
        $("issued").scrollIntoView({ block: "nearest" });
      });
    }
    function reset(e) {
      if (!window.confirm("Free " + e.email + " for a new session?\n\nTheir ended session keeps its record; their next sign-in starts a new one. " +
        "It is refused while their session still runs.")) return;
      entryAction("POST", e, "/reset", e.email + " may start a new session.");
    }
    function removeEntry(e) {
      if (!window.confirm("Remove " + e.email + " from the roster?\n\nTheir code stops working at once; a session they had keeps its record. " +
        "It is refused while their session still runs.")) return;
      entryAction("DELETE", e, "", e.email + " was removed from the roster.");
    }

    document.querySelectorAll("[data-copy]").forEach(function (b) {
      b.dataset.label = b.textContent;
      b.addEventListener("click", function () {
        var input = $(b.dataset.copy);
        input.select();
        var copied = navigator.clipboard && window.isSecureContext
          ? navigator.clipboard.writeText(input.value)
          : Promise.resolve(document.execCommand("copy"));
        copied.then(function () { b.textContent = "Copied"; }, function () { b.textContent = "Select and copy by hand"; });
      });
    });
    $("issued-close").addEventListener("click", function () {
      $("issued").hidden = true;
      $("issued-code").value = "";
      $("issued-link").value = "";
    });

    // ---- export ----
    $("export").addEventListener("click", function () {
      var id = current.sitting.id;
      if (!window.confirm("Export the roster of " + id + " with new codes?\n\n" +
        "Every candidate gets a new code and invitation link, and every code issued before stops working at once, " +
        "including codes already sent to candidates. Candidates already signed in keep their sessions.\n\n" +
        "The file you download is the only copy of the new codes.")) return;
      say("t-message", "Exporting…");
      api("POST", path() + "/roster/export", undefined, { blob: true }).then(function (blob) {
        var a = document.createElement("a");
        a.href = URL.createObjectURL(blob);
        a.download = id + "-codes.csv";
        document.body.appendChild(a);
        a.click();
        a.remove();
        setTimeout(function () { URL.revokeObjectURL(a.href); }, 60000);
        say("t-message", "Exported " + id + "-codes.csv: it holds the only copy of the new codes, and every earlier code no longer works.");
        loadSitting(id, true);
      }).catch(function (e) { say("t-message", e.message, true); });
    });

    // ---- import ----
    function clearPreview() {
      pendingFile = null;
      $("import").disabled = true;
      $("preview").hidden = true;
      $("preview").querySelector("tbody").textContent = "";
      say("preview-summary", "");
    }

    // renderPreview shows every row with a problem, highlighted with its
    // line from the file, among the first rows that are fine.
    function renderPreview(res, lines) {
      var items = (res.errors || []).map(function (e) { return { line: e.line, err: e }; });
      (res.rows || []).slice(0, PREVIEW_ROWS).forEach(function (r) { items.push({ line: r.line, row: r }); });
      items.sort(function (a, b) { return a.line - b.line || (a.err ? -1 : 1); });
      var tbody = $("preview").querySelector("tbody");
      tbody.textContent = "";
      items.forEach(function (it) {
        var tr;
        if (it.err) {
          tr = document.createElement("tr");
          tr.appendChild(el("td", it.line));
          var text = (lines && lines[it.line - 1]) || "";
          var td = el("td", text.length > 160 ? text.slice(0, 160) + "…" : text, "mono");
          td.colSpan = 3;
          tr.appendChild(td);
          tr.appendChild(el("td", (it.err.field ? it.err.field + ": " : "") + it.err.message));
          tr.className = "bad";
        } else {
          tr = row([it.line, it.row.email, it.row.name, it.row.external_id || "", ""]);
        }
        tr.dataset.line = it.line;
        tbody.appendChild(tr);
      });
      $("preview").hidden = !items.length;
      var n = res.count || 0, bad = res.error_count || 0, text;
      if (bad) {
        text = plural(bad, "row") + " with problems (highlighted) and " + plural(n, "good row") +
          ". Nothing is imported while any row is bad: fix the file and choose it again.";
      } else if (n) {
        text = plural(n, "candidate") + " ready to import.";
      } else {
        text = "The file has no candidates.";
      }
      if (n > PREVIEW_ROWS) text += " The first " + PREVIEW_ROWS + " good rows are shown.";
      say("preview-summary", text, bad > 0);
    }

    $("roster-file").addEventListener("change", function () {
      clearPreview();
      var f = $("roster-file").files[0];
      if (!f) return;
      if (f.size > MAX_FILE) {
        say("preview-summary", f.name + " is " + h.size(f.size) + "; a roster file may be at most 10 MiB. Split it.", true);
        return;
      }
      say("preview-summary", "Checking " + f.name + "…");
      var lines = null;
      f.text().then(function (t) {
        lines = t.split(/\r\n|\n|\r/);
        return api("POST", path() + "/roster?preview=1", f, { contentType: "text/csv" });
      }).then(function (res) {
        renderPreview(res, lines);
        if (!res.error_count && res.count > 0) {
          pendingFile = f;
          $("import").disabled = false;
        }
      }).catch(function (e) { say("preview-summary", e.message, true); });
    });

    $("import").addEventListener("click", function () {
      if (!pendingFile) return;
      var id = current.sitting.id;
      $("import").disabled = true;
      say("preview-summary", "Importing…");
      api("POST", path() + "/roster", pendingFile, { contentType: "text/csv" }).then(function (res) {
        $("import-form").reset();
        clearPreview();
        say("t-message", "Imported " + plural(res.imported, "candidate") + ". Export the roster to get their codes and invitation links.");
        loadSitting(id, true);
      }).catch(function (e) {
        if (e.data && e.data.errors) renderPreview(e.data);
        say("preview-summary", e.message, true);
      });
    });

    // route shows the view for a path and reports whether it is one of
    // these.
    function route(pathname) {
      if (/^\/admin\/sittings\/?$/.test(pathname)) {
        loadSittings();
        return true;
      }
      var m = /^\/admin\/sittings\/([^/]+)\/?$/.exec(pathname);
      if (m) {
        loadSitting(decodeURIComponent(m[1]));
        return true;
      }
      return false;
    }
    return { route: route };
  }
};
