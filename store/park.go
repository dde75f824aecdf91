package store

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/session"
)

// A parked start (session.Park) goes back to its line at its old place
// and gives its slot back, and admission is held: the next in line would
// fail the same way. The hold is one hash, {prefix}queue:hold:
//
//	reason   session.ParkNoCapacity or session.ParkUnavailable (the last park's)
//	detail   the runtime's answer, in full, for the exam staff
//	session  who parked last
//	since    when the hold began (ms); at: the last park (ms)
//	state    held     no admission at all
//	         probe    the next admission pass admits one session, the probe
//	         probing  the probe is provisioning; no other admission
//	probe    the probe's session id
//
// A hold for an unavailable runtime is opened (deleted) when the admission
// sweep sees the runtime answer again: its starts resume in line order at
// once. A no-capacity hold is lifted to probe when room may have come
// back (a lab ended: a slot given back; or the sweep's retry): the next
// start in line tries alone. Once its lab is ready the next one tries, and
// so on, one at a time, until nobody waits (the hold is then deleted) or a
// probe finds no room and is parked again, which holds once more. Room
// that fits one lab is never handed to a crowd that would all fail.

// Hold states.
const (
	HoldHeld    = "held"
	HoldProbe   = "probe"
	HoldProbing = "probing"
)

// Hold is the admission hold while parked starts wait.
type Hold struct {
	Reason  string    `json:"reason"`
	Detail  string    `json:"detail"`
	Session string    `json:"session"`
	Since   time.Time `json:"since"`
	At      time.Time `json:"at"`
	State   string    `json:"state"`
	Probe   string    `json:"probe,omitempty"`
}

// parkScript moves a session from the slot holders back to its line at
// its old score and holds admission for reason. ARGV: prefix, id,
// sitting, score, reason, detail, now (ms).
var parkScript = redis.NewScript(`
local P, id, s, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
for _, k in ipairs(redis.call("smembers", P .. "known")) do
  redis.call("srem", P .. "held:" .. k, id)
end
redis.call("srem", P .. "held", id)
redis.call("zadd", P .. "line:" .. s, "NX", score, id)
redis.call("sadd", P .. "known", s)
local H = P .. "hold"
if redis.call("exists", H) == 0 then redis.call("hset", H, "since", ARGV[7]) end
redis.call("hset", H, "reason", ARGV[5], "detail", ARGV[6], "session", id, "at", ARGV[7], "state", "held", "probe", "")
return 1
`)

// liftScript lifts a held hold of reason: to probe, or open (deleted).
// ARGV: prefix, reason, "probe" or "open". Answers 1 if it changed.
var liftScript = redis.NewScript(`
local H = ARGV[1] .. "hold"
if redis.call("hget", H, "state") ~= "held" or redis.call("hget", H, "reason") ~= ARGV[2] then return 0 end
if ARGV[3] == "open" then redis.call("del", H) else redis.call("hset", H, "state", "probe") end
return 1
`)

// endProbeScript ends the probe of id: the next pass probes with the
// next in line (or, with nobody waiting, deletes the hold). ARGV: prefix,
// id. Answers 1 if id was the probe.
var endProbeScript = redis.NewScript(`
local H = ARGV[1] .. "hold"
if redis.call("hget", H, "state") ~= "probing" or redis.call("hget", H, "probe") ~= ARGV[2] then return 0 end
redis.call("hset", H, "state", "probe", "probe", "")
return 1
`)

// ParkSlot takes a session whose start is being parked from the slot
// holders back to its sitting's line, at its old place (StartedAt: before
// everyone who started later), and holds admission for reason with the
// runtime's detail. The record's transition (session.Park) comes after:
// should the process die in between, the admission sweep puts the slot
// back from the record and the provision's retry parks it again. Parking
// twice changes nothing more.
func (s *Store) ParkSlot(ctx context.Context, sess *session.Session, reason, detail string) error {
	err := parkScript.Run(ctx, s.rdb, []string{s.queuePrefix() + "held"}, s.queuePrefix(), sess.ID, lineOf(sess), ms(sess.StartedAt),
		reason, detail, ms(s.now())).Err()
	if err != nil {
		return fmt.Errorf("park %s: %w", sess.ID, err)
	}
	return nil
}

// AdmissionHold answers the hold on admission; ok is false when there is
// none.
func (s *Store) AdmissionHold(ctx context.Context) (h Hold, ok bool, err error) {
	m, err := s.rdb.HGetAll(ctx, s.queuePrefix()+"hold").Result()
	if err != nil {
		return Hold{}, false, fmt.Errorf("read admission hold: %w", err)
	}
	if len(m) == 0 || m["state"] == "" {
		return Hold{}, false, nil
	}
	at := func(k string) time.Time {
		v, _ := strconv.ParseInt(m[k], 10, 64)
		return time.UnixMilli(v).UTC()
	}
	return Hold{Reason: m["reason"], Detail: m["detail"], Session: m["session"], Since: at("since"), At: at("at"),
		State: m["state"], Probe: m["probe"]}, true, nil
}

// LiftHold lifts a held hold for reason: open lets every waiting start be
// admitted in line order, otherwise the next pass admits one probe. It
// reports whether there was such a hold.
func (s *Store) LiftHold(ctx context.Context, reason string, open bool) (bool, error) {
	how := HoldProbe
	if open {
		how = "open"
	}
	n, err := liftScript.Run(ctx, s.rdb, []string{s.queuePrefix() + "hold"}, s.queuePrefix(), reason, how).Int()
	if err != nil {
		return false, fmt.Errorf("lift admission hold: %w", err)
	}
	return n == 1, nil
}

// EndProbe ends the probe of id, if it is the probe — its lab is ready,
// or it left without one — and the next pass probes with the next in
// line.
func (s *Store) EndProbe(ctx context.Context, id string) (bool, error) {
	n, err := endProbeScript.Run(ctx, s.rdb, []string{s.queuePrefix() + "hold"}, s.queuePrefix(), id).Int()
	if err != nil {
		return false, fmt.Errorf("end admission probe: %w", err)
	}
	return n == 1, nil
}

// RunningLabs is how many sessions hold a lab slot now.
func (s *Store) RunningLabs(ctx context.Context) (int, error) {
	n, err := s.rdb.SCard(ctx, s.queuePrefix()+"held").Result()
	if err != nil {
		return 0, fmt.Errorf("count lab slots: %w", err)
	}
	return int(n), nil
}
