// A terminal screen for replays and live views. With a working xterm.js
// (window.Terminal) the screen is an xterm in read-only mode; without one
// it is a small VT100 subset drawn as text: enough for shells, prompts,
// line editing and clears, which is what exam terminals show.
"use strict";

(function () {
  var MAX_SCROLLBACK = 2000;

  function XtermScreen(el, cols, rows) {
    this.el = el;
    this.term = new window.Terminal({ cols: cols, rows: rows, disableStdin: true, rendererType: "dom", scrollback: MAX_SCROLLBACK });
    this.term.open(el);
  }
  XtermScreen.prototype.write = function (s) { this.term.write(s); };
  XtermScreen.prototype.reset = function () { this.term.reset(); };
  XtermScreen.prototype.resize = function (cols, rows) { this.term.resize(cols, rows); };
  XtermScreen.prototype.text = function () { return this.el.textContent; };

  // TextScreen keeps a grid of characters, a cursor and a scrollback.
  function TextScreen(el, cols, rows) {
    this.el = el;
    this.pre = document.createElement("pre");
    el.appendChild(this.pre);
    this.resize(cols, rows);
  }
  TextScreen.prototype.blank = function () {
    return new Array(this.cols + 1).join(" ").split("");
  };
  TextScreen.prototype.resize = function (cols, rows) {
    this.cols = Math.max(2, Math.min(cols || 80, 500));
    this.rows = Math.max(2, Math.min(rows || 24, 200));
    this.reset();
  };
  TextScreen.prototype.reset = function () {
    this.grid = [];
    for (var i = 0; i < this.rows; i++) this.grid.push(this.blank());
    this.scrollback = [];
    this.x = 0; this.y = 0; this.wrap = false;
    this.state = "text"; this.params = "";
    this.draw();
  };
  TextScreen.prototype.lineFeed = function () {
    if (this.y === this.rows - 1) {
      this.scrollback.push(this.grid.shift().join("").replace(/\s+$/, ""));
      if (this.scrollback.length > MAX_SCROLLBACK) this.scrollback.shift();
      this.grid.push(this.blank());
    } else {
      this.y++;
    }
  };
  TextScreen.prototype.put = function (ch) {
    if (this.wrap) { this.x = 0; this.lineFeed(); this.wrap = false; }
    this.grid[this.y][this.x] = ch;
    if (this.x === this.cols - 1) this.wrap = true; else this.x++;
  };
  TextScreen.prototype.eraseLine = function (y, from, to) {
    for (var x = from; x < to; x++) this.grid[y][x] = " ";
  };
  TextScreen.prototype.csi = function (final) {
    var priv = this.params.charAt(0) === "?";
    var ps = (priv ? this.params.slice(1) : this.params).split(";").map(function (p) { return parseInt(p, 10); });
    var n = isNaN(ps[0]) ? 1 : Math.max(ps[0], 1);
    var i;
    if (priv) return; // modes (cursor keys, bracketed paste…) do not change the text
    switch (final) {
      case "A": this.y = Math.max(0, this.y - n); break;
      case "B": this.y = Math.min(this.rows - 1, this.y + n); break;
      case "C": this.x = Math.min(this.cols - 1, this.x + n); break;
      case "D": this.x = Math.max(0, this.x - n); break;
      case "G": this.x = Math.min(this.cols - 1, n - 1); break;
      case "d": this.y = Math.min(this.rows - 1, n - 1); break;
      case "H": case "f":
        this.y = Math.min(this.rows - 1, (isNaN(ps[0]) ? 1 : Math.max(ps[0], 1)) - 1);
        this.x = Math.min(this.cols - 1, (isNaN(ps[1]) ? 1 : Math.max(ps[1], 1)) - 1);
        break;
      case "J":
        var mode = isNaN(ps[0]) ? 0 : ps[0];
        if (mode === 0) { this.eraseLine(this.y, this.x, this.cols); for (i = this.y + 1; i < this.rows; i++) this.eraseLine(i, 0, this.cols); }
        if (mode === 1) { this.eraseLine(this.y, 0, this.x + 1); for (i = 0; i < this.y; i++) this.eraseLine(i, 0, this.cols); }
        if (mode >= 2) { for (i = 0; i < this.rows; i++) this.eraseLine(i, 0, this.cols); }
        break;
      case "K":
        var k = isNaN(ps[0]) ? 0 : ps[0];
        if (k === 0) this.eraseLine(this.y, this.x, this.cols);
        if (k === 1) this.eraseLine(this.y, 0, this.x + 1);
        if (k === 2) this.eraseLine(this.y, 0, this.cols);
        break;
      case "P": this.grid[this.y].splice(this.x, n); while (this.grid[this.y].length < this.cols) this.grid[this.y].push(" "); break;
      case "@": for (i = 0; i < n; i++) this.grid[this.y].splice(this.x, 0, " "); this.grid[this.y].length = this.cols; break;
      case "X": this.eraseLine(this.y, this.x, Math.min(this.cols, this.x + n)); break;
      default: break; // colours (m), scroll regions (r) and the rest leave the text alone
    }
    this.wrap = false;
  };
  TextScreen.prototype.write = function (s) {
    for (var i = 0; i < s.length; i++) {
      var ch = s.charAt(i);
      switch (this.state) {
        case "text":
          if (ch === "\x1b") this.state = "esc";
          else if (ch === "\r") { this.x = 0; this.wrap = false; }
          else if (ch === "\n") { this.lineFeed(); this.wrap = false; }
          else if (ch === "\b") { this.x = Math.max(0, this.x - 1); this.wrap = false; }
          else if (ch === "\t") { this.x = Math.min(this.cols - 1, (Math.floor(this.x / 8) + 1) * 8); }
          else if (ch >= " " && ch !== "\x7f") this.put(ch);
          break;
        case "esc":
          if (ch === "[") { this.state = "csi"; this.params = ""; }
          else if (ch === "]") this.state = "osc";
          else if (ch === "(" || ch === ")" || ch === "#") this.state = "skip";
          else this.state = "text";
          break;
        case "csi":
          if (ch >= "@" && ch <= "~") { this.csi(ch); this.state = "text"; } else this.params += ch;
          break;
        case "osc":
          if (ch === "\x07") this.state = "text";
          else if (ch === "\x1b") this.state = "skip"; // ESC \ ends it
          break;
        default:
          this.state = "text";
      }
    }
    this.schedule();
  };
  TextScreen.prototype.schedule = function () {
    var self = this;
    if (this.pending) return;
    this.pending = true;
    window.requestAnimationFrame(function () { self.pending = false; self.draw(); });
  };
  TextScreen.prototype.text = function () {
    var lines = this.scrollback.slice();
    for (var i = 0; i < this.rows; i++) lines.push(this.grid[i].join("").replace(/\s+$/, ""));
    while (lines.length && lines[lines.length - 1] === "") lines.pop();
    return lines.join("\n");
  };
  TextScreen.prototype.draw = function () {
    this.pre.textContent = this.text();
    this.el.scrollTop = this.el.scrollHeight;
  };

  window.ExamlabScreen = {
    // create replaces el's content with a screen of cols x rows.
    create: function (el, cols, rows) {
      el.textContent = "";
      if (typeof window.Terminal === "function") {
        try { return new XtermScreen(el, cols, rows); } catch (e) { el.textContent = ""; }
      }
      return new TextScreen(el, cols, rows);
    }
  };
})();
