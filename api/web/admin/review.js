// The session page's review lab: a finished session's lab restored from
// its archive (POST/GET/DELETE /api/admin/session/{id}/review), its state
// and expiry, the progress of a regrade run in it, and an interactive
// terminal per node over /ws/admin/review/{review}/terminal/{node} in
// xterm.js. admin.js owns sign-in and routing and hands in its helpers; as
// everywhere in the panel, values are written as text, never as HTML.
"use strict";

window.ExamlabReview = {
  create: function (h) {
    var $ = h.$, api = h.api;
    var REFRESH_MS = 3000;
    var sessionID = null, review = null, timer = null, term = null, ws = null;

    function path() { return "/api/admin/session/" + encodeURIComponent(sessionID) + "/review"; }
    function say(text, isError) {
      $("rv-summary").textContent = text;
      $("rv-summary").className = isError ? "error" : "muted";
    }
    function left(t) {
      var s = Math.max(0, Math.round((new Date(t) - new Date()) / 1000));
      return Math.floor(s / 60) + " min " + (s % 60) + " s";
    }

    function render(rv) {
      review = rv;
      var st = $("rv-state");
      st.textContent = rv ? rv.status : "none";
      st.className = "badge " + (rv ? rv.status : "");
      $("rv-start").disabled = !!rv;
      $("rv-end").disabled = !rv;
      $("rv-term-form").hidden = !(rv && rv.status === "ready");
      if (!rv) {
        say("No review lab is running. \"Review lab\" restores this session's lab from its archive, under its own names and network.");
        closeTerminal();
      } else if (rv.status === "starting") {
        say("Restoring review lab " + rv.id + " from the archive… (asked for by " + rv.created_by + " at " + h.when(rv.created_at) + ")");
      } else {
        say("Review lab " + rv.id + " is ready since " + h.when(rv.ready_at) + "; it ends at " + h.when(rv.expires_at) +
          " (in " + left(rv.expires_at) + "). Its containers are exam-" + rv.id.slice(0, 8) + "-{node}.");
      }
      var sel = $("rv-node"), keep = sel.value;
      sel.textContent = "";
      ((rv && rv.nodes) || []).forEach(function (n) { sel.appendChild(h.el("option", n.name)); });
      if (keep) sel.value = keep;
      var g = rv && rv.regrade;
      $("rv-regrade").textContent = !g ? "" :
        g.state === "done" ? "Regrade in the review lab done at " + h.when(g.done_at) + ": " + g.score + " / " + g.max_score + " (see Grading)." :
        g.state === "failed" ? "Regrade in the review lab failed: " + g.error :
        "Regrade in the review lab: " + g.state + "…";
      clearTimeout(timer);
      if (rv && (rv.status === "starting" || (g && g.state !== "done" && g.state !== "failed") || rv.status === "ready")) {
        var id = sessionID;
        timer = setTimeout(function () { if (sessionID === id) load(id, g && g.state); }, REFRESH_MS);
      }
    }

    // load shows the session's review lab; when a regrade that was running
    // has finished, the page reloads to show the new results.
    function load(id, regradeWas) {
      if (sessionID !== id) closeTerminal();
      sessionID = id;
      return api("GET", path()).then(function (res) {
        if (sessionID !== id) return;
        render(res.review);
        var g = res.review && res.review.regrade;
        if (regradeWas && regradeWas !== "done" && g && g.state === "done" && h.onRegraded) h.onRegraded(id);
      }).catch(function (e) { say(e.message, true); });
    }

    $("rv-start").addEventListener("click", function () {
      if (!window.confirm("Restore this session's lab from its archive as a review lab? It holds one lab slot until it ends.")) return;
      say("Checking the archive…");
      api("POST", path()).then(function (res) { render(res.review); })
        .catch(function (e) { say(e.message, true); });
    });
    $("rv-end").addEventListener("click", function () {
      if (!review || !window.confirm("End review lab " + review.id + " now? Its containers are removed.")) return;
      api("DELETE", path()).then(function () { closeTerminal(); say("Ending the review lab…"); load(sessionID); })
        .catch(function (e) { say(e.message, true); });
    });

    function closeTerminal() {
      if (ws) { ws.onclose = null; ws.close(); ws = null; }
      if (term) { term.destroy(); term = null; }
      $("rv-terminal").textContent = "";
      $("rv-term-state").textContent = "";
    }
    $("rv-close").addEventListener("click", closeTerminal);
    $("rv-open").addEventListener("click", function () {
      var node = $("rv-node").value;
      if (!review || !node) return;
      closeTerminal();
      if (!window.Terminal) { $("rv-term-state").textContent = "xterm.js is missing from this build (make web)"; return; }
      term = new window.Terminal({ cols: 120, rows: 30, rendererType: "dom", scrollback: 5000 });
      term.open($("rv-terminal"));
      var enc = new TextEncoder(), dec = new TextDecoder();
      var proto = location.protocol === "https:" ? "wss://" : "ws://";
      ws = new WebSocket(proto + location.host + "/ws/admin/review/" + encodeURIComponent(review.id) +
        "/terminal/" + encodeURIComponent(node) + "?rows=" + term.rows + "&cols=" + term.cols);
      ws.binaryType = "arraybuffer";
      $("rv-term-state").textContent = "connecting to " + node;
      var sock = ws;
      term.on("data", function (d) { if (sock.readyState === WebSocket.OPEN) sock.send(enc.encode(d)); });
      ws.onmessage = function (ev) {
        if (typeof ev.data !== "string") { if (term) term.write(dec.decode(new Uint8Array(ev.data), { stream: true })); return; }
        var m = {};
        try { m = JSON.parse(ev.data); } catch (e) { return; }
        if (m.type === "ready") $("rv-term-state").textContent = node + " (review lab " + review.id + ", recorded)";
        else if (m.type === "exit") $("rv-term-state").textContent = m.message || "exited";
      };
      ws.onclose = function (ev) { $("rv-term-state").textContent = "closed: " + (ev.reason || ev.code); };
    });

    return { load: load, close: closeTerminal };
  }
};
