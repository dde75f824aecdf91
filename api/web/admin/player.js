// An asciicast v2 player: the header line gives the terminal size, every
// further line is [seconds, type, data]. Output ("o") is drawn, resizes
// ("r") resize the screen; input ("i") and markers ("m") are not drawn.
"use strict";

(function () {
  function Player(el, onUpdate) {
    this.el = el;
    this.onUpdate = onUpdate || function () {};
    this.events = [];
    this.duration = 0;
    this.pos = 0;       // seconds into the recording
    this.next = 0;      // index of the first event not drawn yet
    this.speed = 1;
    this.playing = false;
    this.width = 80; this.height = 24;
    this.screen = window.ExamlabScreen.create(el, 80, 24);
  }

  // parse reads a recording's text; a torn last line (a recording still
  // being written) is ignored.
  Player.parse = function (text) {
    var lines = text.split("\n");
    var header = JSON.parse(lines[0]);
    if (header.version !== 2) throw new Error("not an asciicast v2 recording");
    var events = [];
    for (var i = 1; i < lines.length; i++) {
      if (!lines[i]) continue;
      var ev;
      try { ev = JSON.parse(lines[i]); } catch (e) { continue; }
      if (Array.isArray(ev) && ev.length >= 3 && typeof ev[0] === "number") events.push(ev);
    }
    // Long idle stretches are shortened the way asciinema does, when the
    // recording asks for it.
    var limit = header.idle_time_limit;
    if (limit > 0) {
      var shift = 0, last = 0;
      events.forEach(function (ev) {
        var gap = ev[0] - last;
        last = ev[0];
        if (gap > limit) shift += gap - limit;
        ev[0] -= shift;
      });
    }
    return { header: header, events: events };
  };

  Player.prototype.load = function (text) {
    this.pause();
    var rec = Player.parse(text);
    this.width = rec.header.width || 80;
    this.height = rec.header.height || 24;
    this.events = rec.events;
    this.duration = rec.events.length ? rec.events[rec.events.length - 1][0] : 0;
    this.seek(0);
  };

  Player.prototype.apply = function (ev) {
    if (ev[1] === "o") this.screen.write(ev[2]);
    else if (ev[1] === "r") {
      var m = /^(\d+)x(\d+)$/.exec(ev[2]);
      if (m) this.screen.resize(+m[1], +m[2]);
    }
  };

  // seek redraws the screen as it was t seconds in.
  Player.prototype.seek = function (t) {
    t = Math.max(0, Math.min(t, this.duration));
    this.screen.resize(this.width, this.height);
    this.screen.reset();
    this.next = 0;
    while (this.next < this.events.length && this.events[this.next][0] <= t) this.apply(this.events[this.next++]);
    this.pos = t;
    if (this.playing) { this.startWall = performance.now(); this.startPos = t; }
    this.onUpdate(this);
  };

  Player.prototype.setSpeed = function (s) {
    if (this.playing) { this.startPos = this.pos; this.startWall = performance.now(); }
    this.speed = s > 0 ? s : 1;
  };

  Player.prototype.play = function () {
    if (this.playing) return;
    if (this.pos >= this.duration) this.seek(0);
    this.playing = true;
    this.startWall = performance.now();
    this.startPos = this.pos;
    this.tick();
  };

  Player.prototype.pause = function () {
    this.playing = false;
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    this.onUpdate(this);
  };

  Player.prototype.tick = function () {
    var self = this;
    if (!this.playing) return;
    this.pos = Math.min(this.duration, this.startPos + (performance.now() - this.startWall) / 1000 * this.speed);
    while (this.next < this.events.length && this.events[this.next][0] <= this.pos) this.apply(this.events[this.next++]);
    this.onUpdate(this);
    if (this.next >= this.events.length) { this.pos = this.duration; this.pause(); return; }
    // Sleep until the next event is due, at most a quarter second so the
    // position display moves.
    var wait = (this.events[this.next][0] - this.pos) / this.speed * 1000;
    this.timer = setTimeout(function () { self.tick(); }, Math.max(4, Math.min(wait, 250)));
  };

  Player.prototype.finished = function () { return this.next >= this.events.length; };

  window.ExamlabPlayer = Player;
})();
