package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/session"
)

// The admission queue and the lab slots live in Redis, under
// {prefix}queue:
//
//	line:{sitting}  ZSET  queued sessions, scored by StartedAt in ms: the
//	                      sitting's first-come, first-served line
//	held:{sitting}  SET   sessions holding one of the sitting's lab slots
//	held            SET   every slot holder: the deployment's labs
//	known           SET   sittings with a line or a slot holder
//	ends:{sitting}  ZSET  the sitting's last slot releases (ms), and
//	ends            ZSET  the deployment's, for the wait estimate
//	hold            HASH  admission held while parked starts wait (park.go)
//	warm:…                the warm pools (warm.go): a warm lab holds a
//	                      slot in held:{sitting} and held like a session
//
// Slots are sets of session ids, not counters: taking a slot twice or
// giving it back twice changes nothing, so a handler retried after a crash
// never counts a lab twice nor frees a slot it did not hold. Every change
// is one Lua script, so two processes admitting at once never give out
// the same slot. The session records stay the truth: a queued record is
// in its line, one that holds a slot (session.HoldsSlot) is in the held
// sets, and RepairQueue rebuilds every key from the records.
//
// The scripts build the per-sitting key names themselves; that needs a
// single Redis, not a cluster, which is what examlab runs on.

// noSitting names the line of sessions that came in through no sitting
// (before there were sittings): no capacity of its own applies to it.
const noSitting = "-"

// endsKept is how many recent slot releases the estimate looks at.
const endsKept = 20

// admitBatch bounds the slots one admission pass gives out.
const admitBatch = 64

func lineOf(sess *session.Session) string {
	if sess.SittingID == "" {
		return noSitting
	}
	return sess.SittingID
}

func (s *Store) queuePrefix() string { return s.prefix + "queue:" }

// MaxLabs is the deployment's limit on labs at once (0: none).
func (s *Store) MaxLabs() int { return s.maxLabs }

// Admission is one slot an admission pass gave out.
type Admission struct {
	SessionID string
	SittingID string
	// WarmLab is the warm lab the session claimed with its slot (its
	// sitting's pool had one ready); empty when its lab is to be made.
	WarmLab string
	// WarmEmpty: the sitting has a warm pool, but no lab of it was ready.
	WarmEmpty bool
}

// forgetLua defines forget(P, s), which drops sitting s from known once it
// has neither a line nor a slot holder. Shared by the scripts below.
const forgetLua = `
local function forget(P, s)
  if redis.call("zcard", P .. "line:" .. s) == 0 and redis.call("scard", P .. "held:" .. s) == 0 then
    redis.call("srem", P .. "known", s)
  end
end
`

// joinScript puts a session in its sitting's line unless it holds a slot
// already (a duplicate start after its admission). NX keeps the first
// score: a duplicate start keeps its place.
// ARGV: prefix, id, sitting, score.
var joinScript = redis.NewScript(`
local P, id, s = ARGV[1], ARGV[2], ARGV[3]
if redis.call("sismember", P .. "held", id) == 1 then return 0 end
redis.call("zadd", P .. "line:" .. s, "NX", ARGV[4], id)
redis.call("sadd", P .. "known", s)
return 1
`)

// admitScript gives out free slots: while the deployment is under its
// limit, the oldest head among the lines whose sitting is under its
// capacity moves to the held sets. Oldest first across sittings, first
// come first served within one; a full sitting never holds up another.
// A line whose sitting has a READY warm lab of the exam's current
// version (warm.go) is served by claiming it instead, whether or not a
// slot is free: the warm lab's slot becomes the session's, so the counts
// never grow, and the lab leaves READY in this same step, so two
// processes admitting at once never hand out one lab twice.
// ARGV: prefix, max labs (0: none), batch, now (ms), then sitting,
// capacity (0: none of its own) and warm version ("" no warm pool)
// triples. Answers id, sitting, lab triples: lab is the claimed warm
// lab's id, "-" when the sitting has a pool that had no lab ready, ""
// when it has none. Under a hold (park.go) it admits no one, or the one
// probe.
var admitScript = redis.NewScript(forgetLua + `
local P, max, batch, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local hold = redis.call("hget", P .. "hold", "state")
if hold == "held" or hold == "probing" then return {} end
if hold == "probe" then batch = 1 end
local sittings, caps, vers = {}, {}, {}
for i = 5, #ARGV, 3 do
  sittings[#sittings + 1] = ARGV[i]
  caps[ARGV[i]] = tonumber(ARGV[i + 1])
  vers[ARGV[i]] = ARGV[i + 2]
end
local function warmOf(s)
  local ver = vers[s]
  if ver == "" then return nil end
  for _, w in ipairs(redis.call("zrange", P .. "warm:ready:" .. s, 0, -1)) do
    if redis.call("hget", P .. "warm:lab:" .. w, "version") == ver then return w end
  end
  return nil
end
local out = {}
while #out < 3 * batch do
  local full = max > 0 and redis.call("scard", P .. "held") >= max
  local best, bestScore, bestSitting, bestWarm
  for _, s in ipairs(sittings) do
    local head = redis.call("zrange", P .. "line:" .. s, 0, 0, "WITHSCORES")
    if #head > 0 then
      local w = warmOf(s)
      local cap = caps[s]
      if w or (not full and (cap == 0 or redis.call("scard", P .. "held:" .. s) < cap)) then
        local score = tonumber(head[2])
        if best == nil or score < bestScore or (score == bestScore and head[1] < best) then
          best, bestScore, bestSitting, bestWarm = head[1], score, s, w
        end
      end
    end
  end
  if best == nil then break end
  redis.call("zrem", P .. "line:" .. bestSitting, best)
  local got = ""
  if bestWarm then
    redis.call("zrem", P .. "warm:ready:" .. bestSitting, bestWarm)
    redis.call("srem", P .. "warm:pool:" .. bestSitting, bestWarm)
    redis.call("srem", P .. "held:" .. bestSitting, bestWarm)
    redis.call("srem", P .. "held", bestWarm)
    redis.call("hset", P .. "warm:lab:" .. bestWarm, "state", "claimed", "claimed_by", best, "claimed", now)
    redis.call("set", P .. "warm:claim:" .. best, bestWarm)
    if redis.call("scard", P .. "warm:pool:" .. bestSitting) == 0 then redis.call("srem", P .. "warm:sittings", bestSitting) end
    redis.call("hincrby", P .. "warm:claims", "claimed", 1)
    got = bestWarm
  elseif vers[bestSitting] ~= "" then
    redis.call("hincrby", P .. "warm:claims", "empty", 1)
    got = "-"
  end
  redis.call("sadd", P .. "held:" .. bestSitting, best)
  redis.call("sadd", P .. "held", best)
  out[#out + 1] = best
  out[#out + 1] = bestSitting
  out[#out + 1] = got
end
if hold == "probe" then
  local waiting = 0
  for _, s in ipairs(sittings) do waiting = waiting + redis.call("zcard", P .. "line:" .. s) end
  if #out > 0 then
    redis.call("hset", P .. "hold", "state", "probing", "probe", out[1])
  elseif waiting == 0 then
    redis.call("del", P .. "hold")
  end
end
for _, s in ipairs(sittings) do forget(P, s) end
return out
`)

// takeScript gives a session a slot whatever the limits (an admin's
// word). ARGV: prefix, id, sitting.
var takeScript = redis.NewScript(`
local P, id, s = ARGV[1], ARGV[2], ARGV[3]
redis.call("zrem", P .. "line:" .. s, id)
redis.call("sadd", P .. "held:" .. s, id)
redis.call("sadd", P .. "held", id)
redis.call("sadd", P .. "known", s)
return 1
`)

// releaseScript takes a session out of every line and gives back any slot
// it held, noting when for the estimate. ARGV: prefix, id, now (ms), kept.
// Answers 1 if a slot was given back. A slot given back may be the room a
// no-capacity hold waits for, and a probe that ends without its lab
// passes the probe on: either way the next pass probes (park.go).
var releaseScript = redis.NewScript(forgetLua + `
local P, id, now, kept = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local function ended(key)
  redis.call("zadd", key, now, id)
  redis.call("zremrangebyrank", key, 0, -kept - 1)
end
for _, s in ipairs(redis.call("smembers", P .. "known")) do
  redis.call("zrem", P .. "line:" .. s, id)
  if redis.call("srem", P .. "held:" .. s, id) == 1 then ended(P .. "ends:" .. s) end
  forget(P, s)
end
local H = P .. "hold"
local freed = redis.call("srem", P .. "held", id) == 1
local hold = redis.call("hget", H, "state")
if hold == "probing" and redis.call("hget", H, "probe") == id then
  redis.call("hset", H, "state", "probe", "probe", "")
elseif freed and hold == "held" and redis.call("hget", H, "reason") == "no-capacity" then
  redis.call("hset", H, "state", "probe")
end
if freed then
  ended(P .. "ends")
  return 1
end
return 0
`)

// settleScript sets one session's keys to what its record calls for:
// "line" (in its sitting's line at score), "held" (a slot of its
// sitting) or "none". A queued record whose session holds a slot was
// admitted by a pass that did not live to record it: that is answered
// "unrecorded" and left as it is, for the admission to be rolled forward.
// ARGV: prefix, id, want, sitting, score.
var settleScript = redis.NewScript(forgetLua + `
local P, id, want, sitting, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if want == "line" and redis.call("sismember", P .. "held", id) == 1 then return "unrecorded" end
for _, s in ipairs(redis.call("smembers", P .. "known")) do
  if s ~= sitting or want ~= "line" then redis.call("zrem", P .. "line:" .. s, id) end
  if s ~= sitting or want ~= "held" then redis.call("srem", P .. "held:" .. s, id) end
  forget(P, s)
end
if want == "line" then
  redis.call("zadd", P .. "line:" .. sitting, "NX", score, id)
  redis.call("sadd", P .. "known", sitting)
elseif want == "held" then
  redis.call("sadd", P .. "held:" .. sitting, id)
  redis.call("sadd", P .. "held", id)
  redis.call("sadd", P .. "known", sitting)
else
  redis.call("srem", P .. "held", id)
end
return "ok"
`)

// placeScript answers how many sessions are ahead of one in line, and the
// recent slot releases of ends. With global set, sessions of other
// sittings queued earlier count as ahead too: under the deployment's
// limit the oldest goes first. ARGV: prefix, id, sitting, global (1/0),
// ends key suffix. Answers {-1} when the session is not in its line.
var placeScript = redis.NewScript(`
local P, id, sitting = ARGV[1], ARGV[2], ARGV[3]
local line = P .. "line:" .. sitting
local rank = redis.call("zrank", line, id)
if not rank then return {-1, {}} end
local ahead = rank
if ARGV[4] == "1" then
  local score = redis.call("zscore", line, id)
  for _, s in ipairs(redis.call("smembers", P .. "known")) do
    if s ~= sitting then ahead = ahead + redis.call("zcount", P .. "line:" .. s, "-inf", "(" .. score) end
  end
end
return {ahead, redis.call("zrange", P .. ARGV[5], 0, -1, "WITHSCORES")}
`)

func ms(t time.Time) int64 { return t.UnixMilli() }

// JoinQueue puts a queued session in its sitting's line, at its StartedAt.
// Joining again keeps the first place; a session that holds a slot
// already does not join.
func (s *Store) JoinQueue(ctx context.Context, sess *session.Session) error {
	if sess.Status != session.StateQueued {
		return fmt.Errorf("join queue: session %s is %s: %w", sess.ID, sess.Status, session.ErrNotAllowed)
	}
	err := joinScript.Run(ctx, s.rdb, []string{s.queuePrefix() + "held"}, s.queuePrefix(), sess.ID, lineOf(sess), ms(sess.StartedAt)).Err()
	if err != nil {
		return fmt.Errorf("join queue %s: %w", sess.ID, err)
	}
	return nil
}

// capacityOf is a line's sitting's capacity: 0 (none of its own) for the
// line of no sitting and for a sitting deleted while candidates waited.
func (s *Store) capacityOf(ctx context.Context, line string) (int, error) {
	capacity, _, err := s.lineLimits(ctx, line)
	return capacity, err
}

// lineLimits is a line's sitting's capacity (as capacityOf) and the exam
// version its warm labs must have to be claimed: empty when the sitting
// keeps no warm pool or the exam's version is not known here.
func (s *Store) lineLimits(ctx context.Context, line string) (capacity int, warmVersion string, err error) {
	if line == noSitting {
		return 0, "", nil
	}
	st, err := s.GetSitting(ctx, line)
	if errors.Is(err, ErrNoSitting) || errors.Is(err, ErrBadID) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", err
	}
	if st.Warm > 0 && s.examVersion != nil {
		warmVersion = s.examVersion(st.ExamID)
	}
	return st.Capacity, warmVersion, nil
}

// AdmitNext gives out the slots that are free now to the heads of the
// lines, under each sitting's capacity (read from its record now, so a
// changed capacity counts at once) and the deployment's MaxLabs. It
// returns whom it admitted; the caller records each admission
// (session.Admit) and queues its provision.
func (s *Store) AdmitNext(ctx context.Context) ([]Admission, error) {
	P := s.queuePrefix()
	known, err := s.rdb.SMembers(ctx, P+"known").Result()
	if err != nil {
		return nil, fmt.Errorf("admit: %w", err)
	}
	args := []any{P, s.maxLabs, admitBatch, ms(s.now())}
	for _, line := range known {
		capacity, version, err := s.lineLimits(ctx, line)
		if err != nil {
			return nil, fmt.Errorf("admit: %w", err)
		}
		args = append(args, line, capacity, version)
	}
	res, err := admitScript.Run(ctx, s.rdb, []string{P + "held", P + "known"}, args...).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("admit: %w", err)
	}
	out := make([]Admission, 0, len(res)/3)
	for i := 0; i+2 < len(res); i += 3 {
		a := Admission{SessionID: res[i], SittingID: res[i+1]}
		switch res[i+2] {
		case "":
		case "-":
			a.WarmEmpty = true
		default:
			a.WarmLab = res[i+2]
		}
		if a.SittingID == noSitting {
			a.SittingID = ""
		}
		out = append(out, a)
	}
	return out, nil
}

// TakeSlot gives a queued session a slot now, beyond its sitting's
// capacity and the deployment's limit: an admin's decision.
func (s *Store) TakeSlot(ctx context.Context, sess *session.Session) error {
	err := takeScript.Run(ctx, s.rdb, []string{s.queuePrefix() + "held"}, s.queuePrefix(), sess.ID, lineOf(sess)).Err()
	if err != nil {
		return fmt.Errorf("take slot for %s: %w", sess.ID, err)
	}
	return nil
}

// ReleaseSlot takes a session out of the queue and gives back the slot it
// held, if any; released reports whether it held one. Releasing twice
// changes nothing.
func (s *Store) ReleaseSlot(ctx context.Context, id string) (released bool, err error) {
	n, err := releaseScript.Run(ctx, s.rdb, []string{s.queuePrefix() + "held"}, s.queuePrefix(), id, ms(s.now()), endsKept).Int()
	if err != nil {
		return false, fmt.Errorf("release slot of %s: %w", id, err)
	}
	return n == 1, nil
}

// Place is where a queued session stands in line.
type Place struct {
	// Position is 1 for the next session to get a slot.
	Position int
	// Ahead is how many sessions get a slot before it: those of its
	// sitting queued earlier and, under a deployment limit, those of
	// other sittings queued earlier.
	Ahead int
	// Estimate is the wait EstimateWait gives; meaningful only when
	// HasEstimate.
	Estimate    time.Duration
	HasEstimate bool
}

// QueuePlace answers where a queued session stands; ok is false when it
// is not in line (admitted a moment ago, or its line was lost and the
// admission sweep has yet to restore it).
func (s *Store) QueuePlace(ctx context.Context, sess *session.Session) (p Place, ok bool, err error) {
	if sess.Status != session.StateQueued {
		return Place{}, false, nil
	}
	line := lineOf(sess)
	capacity, err := s.capacityOf(ctx, line)
	if err != nil {
		return Place{}, false, err
	}
	// A sitting with a capacity of its own frees a slot when one of its
	// labs ends; otherwise it waits on the deployment's.
	ends := "ends"
	if capacity > 0 {
		ends = "ends:" + line
	}
	global := "0"
	if s.maxLabs > 0 {
		global = "1"
	}
	res, err := placeScript.Run(ctx, s.rdb, []string{s.queuePrefix() + "known"}, s.queuePrefix(), sess.ID, line, global, ends).Slice()
	if err != nil {
		return Place{}, false, fmt.Errorf("queue place of %s: %w", sess.ID, err)
	}
	ahead, _ := res[0].(int64)
	if len(res) < 2 || ahead < 0 {
		return Place{}, false, nil
	}
	var times []time.Time
	if raw, ok := res[1].([]any); ok {
		for i := 1; i < len(raw); i += 2 {
			if v, err := strconv.ParseInt(fmt.Sprint(raw[i]), 10, 64); err == nil {
				times = append(times, time.UnixMilli(v))
			}
		}
	}
	p = Place{Position: int(ahead) + 1, Ahead: int(ahead)}
	p.Estimate, p.HasEstimate = EstimateWait(p.Ahead, times, s.now())
	return p, true, nil
}

// EstimateWait guesses how long a session with ahead others in front of
// it waits for a slot, from the slots given back lately (ends, the last
// few lab ends or failed provisions): slots have freed at one per
// (now − oldest end) / len(ends) lately, and it needs ahead+1 of them.
// With fewer than two ends there is nothing to go on, and no estimate.
func EstimateWait(ahead int, ends []time.Time, now time.Time) (time.Duration, bool) {
	if len(ends) < 2 || ahead < 0 {
		return 0, false
	}
	oldest := ends[0]
	for _, e := range ends {
		if e.Before(oldest) {
			oldest = e
		}
	}
	span := now.Sub(oldest)
	if span <= 0 {
		return 0, false
	}
	each := float64(span) / float64(len(ends))
	d := time.Duration(math.Ceil(each*float64(ahead+1)/float64(time.Second))) * time.Second
	return d, true
}

// QueuedEntry is one session waiting in a sitting's line.
type QueuedEntry struct {
	Position      int       `json:"position"`
	SessionID     string    `json:"session_id"`
	Email         string    `json:"email"`
	Name          string    `json:"name,omitempty"`
	QueuedAt      time.Time `json:"queued_at"`
	WaitedSeconds int64     `json:"waited_seconds"`
	// Parking is why an admitted start waits again (session.Park).
	Parking *session.Parking `json:"parking,omitempty"`
}

// SittingQueue is one sitting's slots and line.
type SittingQueue struct {
	SittingID string `json:"sitting_id"`
	Title     string `json:"title,omitempty"`
	// Capacity is the sitting's own limit; 0: none of its own.
	Capacity int           `json:"capacity"`
	Running  int           `json:"running"`
	Queued   []QueuedEntry `json:"queued"`
}

// QueueState is the whole admission picture, for admins.
type QueueState struct {
	// MaxLabs is the deployment's limit (0: none); Running its labs.
	MaxLabs  int            `json:"max_labs"`
	Running  int            `json:"running"`
	Queued   int            `json:"queued"`
	Sittings []SittingQueue `json:"sittings"`
	// Hold is set while admission waits for parked starts (park.go).
	Hold *Hold `json:"hold,omitempty"`
}

// Queue answers every sitting's running labs and line, the sittings on
// record first (newest window first), then lines of sittings no longer
// on record.
func (s *Store) Queue(ctx context.Context) (QueueState, error) {
	P := s.queuePrefix()
	all, err := s.Sittings(ctx)
	if err != nil {
		return QueueState{}, err
	}
	known, err := s.rdb.SMembers(ctx, P+"known").Result()
	if err != nil {
		return QueueState{}, fmt.Errorf("read queue: %w", err)
	}
	out := QueueState{MaxLabs: s.maxLabs, Sittings: []SittingQueue{}}
	seen := map[string]bool{}
	var rows []SittingQueue
	for _, st := range all {
		seen[st.ID] = true
		rows = append(rows, SittingQueue{SittingID: st.ID, Title: st.Title, Capacity: st.Capacity})
	}
	sort.Strings(known)
	for _, line := range known {
		if !seen[line] {
			rows = append(rows, SittingQueue{SittingID: line})
		}
	}
	var held *redis.IntCmd
	lines := make([]*redis.ZSliceCmd, len(rows))
	running := make([]*redis.IntCmd, len(rows))
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		held = p.SCard(ctx, P+"held")
		for i, r := range rows {
			lines[i] = p.ZRangeWithScores(ctx, P+"line:"+r.SittingID, 0, -1)
			running[i] = p.SCard(ctx, P+"held:"+r.SittingID)
		}
		return nil
	})
	if err != nil {
		return QueueState{}, fmt.Errorf("read queue: %w", err)
	}
	if h, ok, err := s.AdmissionHold(ctx); err != nil {
		return QueueState{}, err
	} else if ok {
		out.Hold = &h
	}
	now := s.now()
	out.Running = int(held.Val())
	for i, r := range rows {
		r.Running = int(running[i].Val())
		r.Queued = []QueuedEntry{}
		for j, z := range lines[i].Val() {
			id, _ := z.Member.(string)
			at := time.UnixMilli(int64(z.Score)).UTC()
			e := QueuedEntry{Position: j + 1, SessionID: id, QueuedAt: at, WaitedSeconds: int64(now.Sub(at) / time.Second)}
			if sess, err := s.Get(ctx, id); err == nil {
				e.Email, e.Name, e.Parking = sess.Email, sess.Name, sess.Parking
			}
			r.Queued = append(r.Queued, e)
		}
		out.Queued += len(r.Queued)
		if r.SittingID == noSitting {
			r.SittingID = ""
		}
		out.Sittings = append(out.Sittings, r)
	}
	return out, nil
}

// QueueRepair is what RepairQueue found.
type QueueRepair struct {
	// Fixed are sessions whose keys did not match their record and now do.
	Fixed []string
	// Unrecorded are queued sessions that hold a slot: an admission pass
	// gave them one and did not live to record it. The admission is to be
	// rolled forward (session.Admit, then the provision).
	Unrecorded []string
	// Provisioning are admitted sessions whose lab is still coming up:
	// their provision is to be queued again (a no-op while it is queued or
	// running), in case the process that admitted them died first.
	Provisioning []string
}

// slotWant is what a session's record calls for: "line" in its sitting's
// line, "held" a slot of its sitting, or "none".
func slotWant(sess *session.Session) string {
	switch {
	case sess == nil:
		return "none"
	case sess.Status == session.StateQueued:
		return "line"
	case sess.HoldsSlot():
		return "held"
	}
	return "none"
}

// RepairQueue brings the queue and slot keys in line with the session
// records, which stay the truth: after Redis lost data, a process died
// between a record and its keys, or a lab ended without giving its slot
// back. It looks at every session the index has as queued or with a lab,
// and every session the keys name; each mismatch is settled under the
// session's lock from its record as it is then, so a concurrent
// transition is never undone.
func (s *Store) RepairQueue(ctx context.Context) (QueueRepair, error) {
	var rep QueueRepair
	P := s.queuePrefix()
	known, err := s.rdb.SMembers(ctx, P+"known").Result()
	if err != nil {
		return rep, fmt.Errorf("repair queue: %w", err)
	}
	lines := make([]*redis.StringSliceCmd, len(known))
	helds := make([]*redis.StringSliceCmd, len(known))
	var held *redis.StringSliceCmd
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		held = p.SMembers(ctx, P+"held")
		for i, line := range known {
			lines[i] = p.ZRange(ctx, P+"line:"+line, 0, -1)
			helds[i] = p.SMembers(ctx, P+"held:"+line)
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("repair queue: %w", err)
	}
	// Where the keys have each session: "line:s", "held:s", "held".
	where := map[string][]string{}
	for _, id := range held.Val() {
		where[id] = append(where[id], "held")
	}
	for i, line := range known {
		for _, id := range lines[i].Val() {
			where[id] = append(where[id], "line:"+line)
		}
		for _, id := range helds[i].Val() {
			where[id] = append(where[id], "held:"+line)
		}
	}
	ids := map[string]bool{}
	for id := range where {
		ids[id] = true
	}
	err = s.summaries(ctx, func(all map[string]*Summary) {
		for id, sum := range all {
			if sum.Status == session.StateQueued || sum.Status.HasLab() {
				ids[id] = true
			}
		}
	})
	if err != nil {
		return rep, err
	}
	order := make([]string, 0, len(ids))
	for id := range ids {
		order = append(order, id)
	}
	sort.Strings(order)
	var errs []error
	for _, id := range order {
		sess, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrBadID) {
			if s.isLiveReview(ctx, id) || s.isLiveWarm(ctx, id) {
				continue // a review lab's or a warm lab's slot: see review.go, warm.go
			}
			sess, err = nil, nil
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if keysMatch(sess, where[id]) {
			if sess != nil && sess.Status == session.StateProvisioning && sess.HoldsSlot() {
				rep.Provisioning = append(rep.Provisioning, id)
			}
			continue
		}
		res, sess, err := s.settle(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		switch {
		case res == "unrecorded":
			rep.Unrecorded = append(rep.Unrecorded, id)
		default:
			rep.Fixed = append(rep.Fixed, id)
			if sess != nil && sess.Status == session.StateProvisioning && sess.HoldsSlot() {
				rep.Provisioning = append(rep.Provisioning, id)
			}
		}
	}
	return rep, errors.Join(errs...)
}

// keysMatch reports whether the keys have the session where its record
// calls for, and nowhere else.
func keysMatch(sess *session.Session, where []string) bool {
	var want []string
	switch slotWant(sess) {
	case "line":
		want = []string{"line:" + lineOf(sess)}
	case "held":
		want = []string{"held", "held:" + lineOf(sess)}
	}
	if len(want) != len(where) {
		return false
	}
	got := map[string]bool{}
	for _, w := range where {
		got[w] = true
	}
	for _, w := range want {
		if !got[w] {
			return false
		}
	}
	return true
}

// settle sets one session's keys from its record, read again under the
// session's lock so that no transition happens in between.
func (s *Store) settle(ctx context.Context, id string) (string, *session.Session, error) {
	unlock, err := s.lock(ctx, "session", id)
	if err != nil {
		return "", nil, err
	}
	defer unlock()
	sess, err := s.Get(ctx, id)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrBadID) {
		sess, err = nil, nil
	}
	if err != nil {
		return "", nil, err
	}
	want, line, score := slotWant(sess), noSitting, int64(0)
	if sess != nil {
		line, score = lineOf(sess), ms(sess.StartedAt)
	}
	res, err := settleScript.Run(ctx, s.rdb, []string{s.queuePrefix() + "known"}, s.queuePrefix(), id, want, line, score).Text()
	if err != nil {
		return "", nil, fmt.Errorf("repair queue entry %s: %w", id, err)
	}
	return res, sess, nil
}
