// The panel's admission queue: every sitting's running labs against its
// capacity and the deployment's limit, and its line, with "Admit now"
// (beyond the limits) and "Remove…" (the session fails with the reason)
// for each candidate waiting. admin.js owns sign-in and routing and hands
// in its helpers; as everywhere in the panel, values are written as text,
// never as HTML.
"use strict";

window.ExamlabQueue = {
  create: function (h) {
    var $ = h.$, api = h.api, el = h.el, row = h.row;
    // The line moves as labs end: often enough that an admin sees a start
    // join the line while they watch, cheap enough for one open panel.
    var REFRESH_MS = 3000;
    var timer = null, only = "", showIdle = false, removing = null, unread = false;

    function say(text, isError) {
      $("q-message").textContent = text || "";
      $("q-message").className = isError ? "error" : "notice";
    }
    function button(text, onClick, cls) {
      var b = el("button", text, cls);
      b.type = "button";
      b.addEventListener("click", onClick);
      return b;
    }
    function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }
    function link(text, href, onClick, cls) {
      var a = el("a", text, cls);
      a.href = href;
      a.addEventListener("click", function (ev) { ev.preventDefault(); onClick(); });
      return a;
    }
    // waited says a wait the way a person would: "45 s", "3 min 5 s", "1 h 2 min".
    function waited(s) {
      s = Math.max(0, s || 0);
      if (s < 60) return s + " s";
      if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
      return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    }
    // reason says why a call failed in words: the API's own message, or
    // that the server could not be reached (fetch's TypeError).
    function reason(e) {
      return e instanceof TypeError ? "the server cannot be reached" : e.message;
    }
    function label(q) { return q.sitting_id ? "sitting " + q.sitting_id : "sessions without a sitting"; }

    function go(sittingID) {
      history.pushState(null, "", "/admin/queue" + (sittingID ? "?sitting=" + encodeURIComponent(sittingID) : ""));
      h.route();
    }
    function visible() { return !$("queue").hidden && location.pathname.replace(/\/$/, "") === "/admin/queue"; }

    function load() {
      clearTimeout(timer);
      return api("GET", "/api/admin/queue").then(function (res) {
        if (!visible()) return;
        if (unread) say("");
        unread = false;
        render(res);
      }).catch(function (e) {
        if (!visible()) return;
        unread = true;
        say("Could not read the queue: " + reason(e) + ". Trying again in a few seconds.", true);
      }).then(function () {
        // Until the admin leaves the view (or is signed out, which hides it).
        // One pending refresh however many loads overlapped (an action's
        // own load while a timed one was under way).
        clearTimeout(timer);
        if (visible()) timer = setTimeout(load, REFRESH_MS);
      });
    }

    function render(res) {
      var all = res.sittings || [], shown;
      if (only) {
        shown = all.filter(function (q) { return q.sitting_id === only; });
      } else {
        shown = all.filter(function (q) { return showIdle || q.running > 0 || q.queued.length > 0; });
      }
      var facts = [];
      if (res.max_labs) {
        facts.push("Labs running: " + res.running + " of at most " + res.max_labs + " in this deployment.");
        if (res.running >= res.max_labs) facts.push("The deployment is at its limit: nobody is admitted until a lab ends, whatever their sitting's capacity.");
      } else {
        facts.push("Labs running: " + res.running + " (no limit for the whole deployment).");
      }
      facts.push(res.queued ? plural(res.queued, "candidate") + " waiting." : "Nobody is waiting.");
      $("q-summary").textContent = facts.join(" ");
      $("q-hold").hidden = !res.hold;
      if (res.hold) $("q-hold").textContent = holdText(res.hold);

      var idle = all.length - all.filter(function (q) { return q.running > 0 || q.queued.length > 0; }).length;
      $("q-title").textContent = only ? "Admission queue of " + only : "Admission queue";
      $("q-all").hidden = !only;
      $("q-idle").hidden = !!only || !idle;
      $("q-idle-text").textContent = " Show the " + plural(idle, "sitting") + " with no lab running and nobody waiting";

      var box = $("q-sittings");
      box.textContent = "";
      shown.forEach(function (q) { box.appendChild(sittingCard(q)); });
      if (!shown.length) {
        box.appendChild(el("p", only ? "There is no sitting " + only + "." : "No lab is running and nobody is waiting.", "muted"));
      }
    }

    // holdText says why admission is held for parked starts, and what
    // lifts it; the reason is the runtime's own, in full.
    function holdText(hold) {
      var why = hold.reason === "unavailable"
        ? "the lab runtime cannot be reached; parked starts resume when it answers again (checked every few seconds)"
        : "the lab runtime has no room for another lab; the next start tries again when a lab ends";
      var state = hold.state === "probing" ? " One start is trying now (session " + hold.probe + ")." :
        hold.state === "probe" ? " The next start in line tries now." : "";
      return "Admission is on hold since " + new Date(hold.since).toLocaleTimeString() + ": " + why + "." + state +
        " Last reason: " + hold.detail;
    }
    // parkedText is why an admitted start is back in line, in full.
    function parkedText(p) {
      return (p.reason === "unavailable" ? "Parked: the lab runtime cannot be reached — " : "Parked: no room for the lab — ") + p.detail;
    }

    function sittingCard(q) {
      var card = el("div", null, "card");
      card.dataset.sitting = q.sitting_id;
      var h2 = el("h2");
      if (q.sitting_id) {
        var page = "/admin/sittings/" + encodeURIComponent(q.sitting_id);
        h2.appendChild(document.createTextNode("Sitting "));
        h2.appendChild(link(q.sitting_id, page, function () { h.go(page); }));
      } else {
        h2.appendChild(el("span", "Sessions without a sitting"));
      }
      if (q.title) h2.appendChild(el("span", " " + q.title, "muted"));
      var full = q.capacity && q.running >= q.capacity;
      if (full) {
        h2.appendChild(document.createTextNode(" "));
        h2.appendChild(el("span", "full", "badge full"));
      }
      card.appendChild(h2);

      var slots = q.capacity
        ? "Labs running: " + q.running + " of " + q.capacity + " (its capacity)."
        : "Labs running: " + q.running + " (no limit of its own).";
      if (full && q.queued.length) slots += " The next in line goes in when one of its labs ends.";
      var p = el("p", slots, "slots");
      card.appendChild(p);

      if (!q.queued.length) {
        card.appendChild(el("p", "Nobody waiting.", "muted"));
        return card;
      }
      var table = el("table", null, "line");
      var head = el("thead"), htr = el("tr");
      ["Position", "Candidate", "Waited", ""].forEach(function (t) { htr.appendChild(el("th", t)); });
      head.appendChild(htr);
      table.appendChild(head);
      var tbody = el("tbody");
      q.queued.forEach(function (e) {
        var cand = el("span");
        cand.appendChild(link(e.email || e.session_id, "/admin/session/" + encodeURIComponent(e.session_id), function () { h.goSession(e.session_id); }));
        if (e.name) cand.appendChild(el("span", " " + e.name, "muted"));
        if (e.parking) {
          var why = el("div", parkedText(e.parking), "parked muted");
          why.dataset.reason = e.parking.reason;
          cand.appendChild(why);
        }
        var acts = el("span", null, "row-actions");
        acts.appendChild(button("Admit now", function () { admit(q, e); }, "admit"));
        acts.appendChild(button("Remove…", function () { askRemove(q, e); }, "danger remove"));
        var tr = row([e.position, cand, waited(e.waited_seconds), acts]);
        tr.dataset.session = e.session_id;
        tr.dataset.email = e.email || "";
        tbody.appendChild(tr);
      });
      table.appendChild(tbody);
      card.appendChild(table);
      return card;
    }

    function who(e) { return e.email || "session " + e.session_id; }

    function admit(q, e) {
      if (!window.confirm("Admit " + who(e) + " now?\n\nTheir lab starts at once, ahead of the line and beyond " +
        (q.sitting_id ? "the capacity of sitting " + q.sitting_id + " and " : "") +
        "the deployment's limit. This is written to their session's audit log.")) return;
      say("Admitting " + who(e) + "…");
      api("POST", "/api/admin/queue/" + encodeURIComponent(e.session_id) + "/admit").then(function () {
        say(who(e) + " was admitted: their lab is being prepared.");
      }).catch(function (err) {
        say("Could not admit " + who(e) + ": " + reason(err) + ".", true);
      }).then(load);
    }

    // ---- remove: a small dialog asks the reason and is the confirmation ----
    function askRemove(q, e) {
      removing = e;
      $("q-remove-who").textContent = who(e);
      $("q-remove-sitting").textContent = label(q);
      $("q-remove-reason").value = "";
      $("q-remove").showModal();
      $("q-remove-reason").focus();
    }
    $("q-remove-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var e = removing, text = $("q-remove-reason").value.trim();
      $("q-remove").close();
      removing = null;
      if (!e) return;
      say("Removing " + who(e) + " from the line…");
      api("DELETE", "/api/admin/queue/" + encodeURIComponent(e.session_id), text ? { reason: text } : undefined).then(function () {
        say(who(e) + " was taken out of the line; their session ended as failed" + (text ? " with your reason." : "."));
      }).catch(function (err) {
        say("Could not remove " + who(e) + ": " + reason(err) + ".", true);
      }).then(load);
    });
    $("q-remove-cancel").addEventListener("click", function () {
      removing = null;
      $("q-remove").close();
    });

    $("q-all-link").addEventListener("click", function (ev) { ev.preventDefault(); go(""); });
    $("q-show-idle").addEventListener("change", function () {
      showIdle = $("q-show-idle").checked;
      load();
    });

    // route shows the queue for /admin/queue (?sitting= narrows it to one
    // sitting) and reports whether the path was the queue's.
    function route(pathname) {
      if (!/^\/admin\/queue\/?$/.test(pathname)) {
        clearTimeout(timer);
        return false;
      }
      only = new URLSearchParams(location.search).get("sitting") || "";
      h.show("queue");
      say("");
      $("q-summary").textContent = "Loading…";
      $("q-sittings").textContent = "";
      load();
      return true;
    }
    return { route: route };
  }
};
