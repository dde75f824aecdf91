package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/lab"
)

// A warm pool keeps labs of a sitting's exam provisioned before anyone
// starts, so that a start claims one instead of waiting for a lab to come
// up. Its state lives in Redis beside the admission queue, under
// {prefix}queue:, because a warm lab holds a lab slot exactly as an
// admitted session does (in held:{sitting} and held) and the claim moves
// that slot to the session inside the admission script itself:
//
//	warm:lab:{id}      HASH  sitting, exam, version, state, created,
//	                         ready, touched, checked, claimed_by, claimed,
//	                         nodes
//	warm:ready:{s}     ZSET  the sitting's READY labs, by ready time (ms)
//	warm:pool:{s}      SET   the sitting's making and ready labs
//	warm:sittings      SET   sittings with a lab in their pool
//	warm:claim:{sess}  STRING the lab a session claimed (roll-forward)
//	warm:claims        HASH  claims by outcome (claimed, empty), for metrics
//	warm:replaced      HASH  labs taken out to be replaced, by reason
//
// A warm lab is making → ready → claimed, or removing once it is taken
// out of the pool (too old, an old exam version, broken while it waited,
// the sitting closed, a provision that failed). Only the admission script moves a lab out of
// READY to claimed, and every removal takes it out of READY first, in one
// script, so a lab is never handed out twice nor removed under a claim.
// A warm lab's id is a session-like 12-char slug whose 8-char prefix is
// claimed in the sessions' prefix space (short:{id8}), so its containers,
// network and Nomad job (exam-{id8}-…) never clash with a session's.
//
// The warm state is Redis's only: should Redis lose it, the labs are
// orphans to the reaper, while claimed labs stay known from their
// sessions' records (session.LabID, in the index's summaries).

// Warm lab states.
const (
	WarmMaking   = "making"
	WarmReady    = "ready"
	WarmClaimed  = "claimed"
	WarmRemoving = "removing"
)

// Outcomes of a start into a sitting with a warm pool.
const (
	WarmOutcomeClaimed = "claimed"
	WarmOutcomeEmpty   = "empty"
)

// Why a warm lab is taken out of its pool to be replaced, counted in
// warm:replaced. Removals that replace nothing (the pool shrinks or
// closes, the runtime has no room for a lab being made) are not counted.
const (
	// WarmReplacedBroken: a node of a ready lab stopped running while it
	// waited (killed, removed, its host lost).
	WarmReplacedBroken = "broken"
	// WarmReplacedOldVersion: the lab is of an exam version no longer
	// loaded.
	WarmReplacedOldVersion = "old_version"
	// WarmReplacedTooOld: ready for longer than the sitting's
	// warm_max_age.
	WarmReplacedTooOld = "too_old"
	// WarmReplacedStuck: its provision made no progress (a worker died).
	WarmReplacedStuck = "stuck"
	// WarmReplacedFailed: its provision failed for good.
	WarmReplacedFailed = "failed"
)

// WarmReplacedReasons lists every reason, for metrics.
var WarmReplacedReasons = []string{WarmReplacedBroken, WarmReplacedOldVersion, WarmReplacedTooOld, WarmReplacedStuck, WarmReplacedFailed}

// ErrNoWarmLab: no warm lab of that id is on record.
var ErrNoWarmLab = errors.New("no such warm lab")

// WarmLab is one warm lab's record.
type WarmLab struct {
	ID        string           `json:"id"`
	SittingID string           `json:"sitting_id"`
	ExamID    string           `json:"exam_id"`
	Version   string           `json:"exam_version"`
	State     string           `json:"state"`
	CreatedAt time.Time        `json:"created_at"`
	ReadyAt   time.Time        `json:"ready_at,omitzero"`
	TouchedAt time.Time        `json:"touched_at,omitzero"`
	CheckedAt time.Time        `json:"checked_at,omitzero"`
	ClaimedBy string           `json:"claimed_by,omitempty"`
	ClaimedAt time.Time        `json:"claimed_at,omitzero"`
	Nodes     []lab.NodeStatus `json:"nodes,omitempty"`
}

// Live reports whether the lab is in its sitting's pool (making or
// ready): it holds a slot and the reaper leaves it alone.
func (w *WarmLab) Live() bool { return w.State == WarmMaking || w.State == WarmReady }

func (s *Store) warmKey(parts ...string) string {
	k := s.queuePrefix() + "warm"
	for _, p := range parts {
		k += ":" + p
	}
	return k
}

// warmTakeScript puts a new making lab in its sitting's pool when the pool
// is short of its size and a slot is free for it, taking the slot in the
// same step: the sitting's (capacity; 0 none) and the deployment's (max;
// 0 none). A sitting whose line has someone waiting gets no new warm lab:
// a free slot is theirs. Answers 1 (made), 0 (the pool is full), -1 (no
// slot free), -2 (candidates wait).
// ARGV: prefix, id, sitting, max, capacity, size, version, exam, now (ms).
var warmTakeScript = redis.NewScript(`
local P, id, s = ARGV[1], ARGV[2], ARGV[3]
local max, cap, size, ver = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local n = 0
for _, w in ipairs(redis.call("smembers", P .. "warm:pool:" .. s)) do
  if redis.call("hget", P .. "warm:lab:" .. w, "version") == ver then n = n + 1 end
end
if n >= size then return 0 end
if redis.call("zcard", P .. "line:" .. s) > 0 then return -2 end
if max > 0 and redis.call("scard", P .. "held") >= max then return -1 end
if cap > 0 and redis.call("scard", P .. "held:" .. s) >= cap then return -1 end
redis.call("sadd", P .. "held:" .. s, id)
redis.call("sadd", P .. "held", id)
redis.call("sadd", P .. "known", s)
redis.call("sadd", P .. "warm:pool:" .. s, id)
redis.call("sadd", P .. "warm:sittings", s)
redis.call("hset", P .. "warm:lab:" .. id, "sitting", s, "exam", ARGV[8], "version", ver,
  "state", "making", "created", ARGV[9], "touched", ARGV[9])
return 1
`)

// warmReadyScript turns a making lab ready (in READY, claimable). A lab
// no longer making (removed meanwhile) stays as it is: answers 0, and
// the caller takes down what it made. ARGV: prefix, id, now (ms), nodes.
var warmReadyScript = redis.NewScript(`
local P, id = ARGV[1], ARGV[2]
local k = P .. "warm:lab:" .. id
if redis.call("hget", k, "state") ~= "making" then return 0 end
local s = redis.call("hget", k, "sitting")
redis.call("hset", k, "state", "ready", "ready", ARGV[3], "touched", ARGV[3], "nodes", ARGV[4])
redis.call("zadd", P .. "warm:ready:" .. s, ARGV[3], id)
return 1
`)

// warmRemoveScript takes a making or ready lab out of its pool and gives
// its slot back, in one step: from then on no claim can take it, and it
// is the caller's to destroy (state removing). A claimed lab is its
// session's and is never removed here: answers 0, as for a lab not on
// record. With want set, only a lab in that state is removed. A reason
// counts the removal in warm:replaced, once: a lab removing already is
// not counted again.
// ARGV: prefix, id, want ("" any live state), reason ("" not counted).
var warmRemoveScript = redis.NewScript(forgetLua + `
local P, id, want, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local k = P .. "warm:lab:" .. id
local st = redis.call("hget", k, "state")
if st ~= "making" and st ~= "ready" then
  if st == "removing" then return 1 end
  return 0
end
if want ~= "" and st ~= want then return 0 end
local s = redis.call("hget", k, "sitting")
redis.call("zrem", P .. "warm:ready:" .. s, id)
redis.call("srem", P .. "warm:pool:" .. s, id)
redis.call("srem", P .. "held:" .. s, id)
redis.call("srem", P .. "held", id)
redis.call("hset", k, "state", "removing")
if reason ~= "" then redis.call("hincrby", P .. "warm:replaced", reason, 1) end
if redis.call("scard", P .. "warm:pool:" .. s) == 0 then redis.call("srem", P .. "warm:sittings", s) end
forget(P, s)
return 1
`)

// warmCheckScript takes a ready lab's health check when the last one (or
// its ready time) is at least every ago, stamping it checked now: one
// process checks it, however many refill passes run. Answers 1 when the
// check is the caller's. ARGV: now (ms), every (ms).
var warmCheckScript = redis.NewScript(`
local k = KEYS[1]
if redis.call("hget", k, "state") ~= "ready" then return 0 end
local last = tonumber(redis.call("hget", k, "checked") or redis.call("hget", k, "ready")) or 0
if tonumber(ARGV[1]) - last < tonumber(ARGV[2]) then return 0 end
redis.call("hset", k, "checked", ARGV[1])
return 1
`)

// NewWarmLab reserves a warm lab id for sitting sittingID of exam examID
// at version, and takes a lab slot for it when the pool has fewer than
// size labs of that version, no one waits in the sitting's line, and a
// slot is free under capacity and the deployment's MaxLabs. made is
// false when no lab was made (the pool is full or no slot is free).
func (s *Store) NewWarmLab(ctx context.Context, sittingID, examID, version string, capacity, size int) (id string, made bool, err error) {
	for i := 0; ; i++ {
		id = NewSessionID()
		ok, err := s.rdb.SetNX(ctx, s.key("short", id[:8]), id, 0).Result()
		if err != nil {
			return "", false, fmt.Errorf("claim warm lab prefix: %w", err)
		}
		if ok {
			break
		}
		if i > 20 {
			return "", false, errors.New("claim warm lab prefix: no free prefix")
		}
	}
	res, err := warmTakeScript.Run(ctx, s.rdb, []string{s.queuePrefix() + "held"}, s.queuePrefix(), id, sittingID,
		s.maxLabs, capacity, size, version, examID, ms(s.now())).Int()
	if err != nil || res != 1 {
		s.releaseWarmShort(context.WithoutCancel(ctx), id)
		if err != nil {
			return "", false, fmt.Errorf("take a slot for a warm lab: %w", err)
		}
		return "", false, nil
	}
	return id, true, nil
}

func (s *Store) releaseWarmShort(ctx context.Context, id string) {
	s.rdb.Eval(ctx, `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`,
		[]string{s.key("short", id[:8])}, id)
}

// WarmReady records that every node of a making warm lab runs: it joins
// its sitting's READY set. ok is false when the lab left the pool while it
// was made; then it is the caller's to destroy.
func (s *Store) WarmReady(ctx context.Context, id string, nodes []lab.NodeStatus) (ok bool, err error) {
	b, err := json.Marshal(nodes)
	if err != nil {
		return false, fmt.Errorf("encode nodes: %w", err)
	}
	n, err := warmReadyScript.Run(ctx, s.rdb, []string{s.warmKey("lab", id)}, s.queuePrefix(), id, ms(s.now()), string(b)).Int()
	if err != nil {
		return false, fmt.Errorf("warm lab %s ready: %w", id, err)
	}
	return n == 1, nil
}

// TouchWarm notes progress on a making lab (its provision is alive).
func (s *Store) TouchWarm(ctx context.Context, id string) error {
	return s.rdb.Eval(ctx, `if redis.call("hget", KEYS[1], "state") == "making" then redis.call("hset", KEYS[1], "touched", ARGV[1]) end return 0`,
		[]string{s.warmKey("lab", id)}, ms(s.now())).Err()
}

// TakeWarmCheck reports whether a ready lab's health check is due (none
// for every since it was checked or became ready) and, if so, takes it:
// no other pass checks the lab until every has passed again.
func (s *Store) TakeWarmCheck(ctx context.Context, id string, every time.Duration) (bool, error) {
	n, err := warmCheckScript.Run(ctx, s.rdb, []string{s.warmKey("lab", id)}, ms(s.now()), every.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("take the health check of warm lab %s: %w", id, err)
	}
	return n == 1, nil
}

// RemoveWarm takes a making or ready lab out of its pool and frees its
// slot (see warmRemoveScript); removed reports that the lab is now (or
// was already) the caller's to destroy, then to DropWarm. A claimed lab
// is never removed. want, when not empty, removes it only in that state.
// reason (one of WarmReplacedReasons, or "" for a removal that replaces
// nothing) is counted for metrics.
func (s *Store) RemoveWarm(ctx context.Context, id, want, reason string) (removed bool, err error) {
	n, err := warmRemoveScript.Run(ctx, s.rdb, []string{s.warmKey("lab", id)}, s.queuePrefix(), id, want, reason).Int()
	if err != nil {
		return false, fmt.Errorf("remove warm lab %s: %w", id, err)
	}
	return n == 1, nil
}

// DropWarm forgets a warm lab once its containers are gone: its record
// and its id's prefix. A claimed lab is dropped by its session's cleanup.
func (s *Store) DropWarm(ctx context.Context, id string) error {
	if !lab.ValidSessionID(id) {
		return fmt.Errorf("warm lab %q: %w", id, ErrBadID)
	}
	w, err := s.WarmLab(ctx, id)
	if errors.Is(err, ErrNoWarmLab) {
		s.releaseWarmShort(ctx, id)
		return nil
	}
	if err != nil {
		return err
	}
	if w.Live() {
		return fmt.Errorf("drop warm lab %s: it is %s", id, w.State)
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.warmKey("lab", id))
		if w.ClaimedBy != "" {
			p.Eval(ctx, `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`,
				[]string{s.warmKey("claim", w.ClaimedBy)}, id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("drop warm lab %s: %w", id, err)
	}
	s.releaseWarmShort(ctx, id)
	return nil
}

// WarmLab reads one warm lab's record; ErrNoWarmLab when there is none.
func (s *Store) WarmLab(ctx context.Context, id string) (*WarmLab, error) {
	if !lab.ValidSessionID(id) {
		return nil, fmt.Errorf("warm lab %q: %w", id, ErrBadID)
	}
	m, err := s.rdb.HGetAll(ctx, s.warmKey("lab", id)).Result()
	if err != nil {
		return nil, fmt.Errorf("read warm lab %s: %w", id, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("warm lab %s: %w", id, ErrNoWarmLab)
	}
	w := &WarmLab{ID: id, SittingID: m["sitting"], ExamID: m["exam"], Version: m["version"], State: m["state"], ClaimedBy: m["claimed_by"]}
	w.CreatedAt, w.ReadyAt, w.TouchedAt, w.ClaimedAt = msTime(m["created"]), msTime(m["ready"]), msTime(m["touched"]), msTime(m["claimed"])
	w.CheckedAt = msTime(m["checked"])
	if m["nodes"] != "" {
		_ = json.Unmarshal([]byte(m["nodes"]), &w.Nodes)
	}
	return w, nil
}

func msTime(v string) time.Time {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

// isLiveWarm reports whether id is a warm lab in its pool, whose slot the
// admission sweep must leave alone: it has no session record.
func (s *Store) isLiveWarm(ctx context.Context, id string) bool {
	w, err := s.WarmLab(ctx, id)
	return err == nil && w.Live()
}

// WarmPool lists a sitting's making and ready labs, oldest first.
func (s *Store) WarmPool(ctx context.Context, sittingID string) ([]*WarmLab, error) {
	ids, err := s.rdb.SMembers(ctx, s.warmKey("pool", sittingID)).Result()
	if err != nil {
		return nil, fmt.Errorf("list warm pool of %s: %w", sittingID, err)
	}
	var out []*WarmLab
	for _, id := range ids {
		w, err := s.WarmLab(ctx, id)
		if errors.Is(err, ErrNoWarmLab) || errors.Is(err, ErrBadID) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// WarmSittings lists the sittings with a lab in their pool.
func (s *Store) WarmSittings(ctx context.Context) ([]string, error) {
	ids, err := s.rdb.SMembers(ctx, s.warmKey("sittings")).Result()
	if err != nil {
		return nil, fmt.Errorf("list warm sittings: %w", err)
	}
	sort.Strings(ids)
	return ids, nil
}

// WarmClaimOf is the lab the admission script gave session id, if any:
// an admission rolled forward after its process died finds it here.
func (s *Store) WarmClaimOf(ctx context.Context, id string) (string, error) {
	v, err := s.rdb.Get(ctx, s.warmKey("claim", id)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("warm claim of %s: %w", id, err)
	}
	return v, nil
}

// WarmCounts is a sitting's pool by state.
type WarmCounts struct {
	Size   int `json:"size"`
	Making int `json:"making"`
	Ready  int `json:"ready"`
}

// WarmStats answers every pool's labs by state, and the claims made so
// far by outcome (claimed, empty), for metrics.
func (s *Store) WarmStats(ctx context.Context) (map[string]WarmCounts, map[string]int64, error) {
	sittings, err := s.WarmSittings(ctx)
	if err != nil {
		return nil, nil, err
	}
	pools := map[string]WarmCounts{}
	for _, id := range sittings {
		labs, err := s.WarmPool(ctx, id)
		if err != nil {
			return nil, nil, err
		}
		var c WarmCounts
		for _, w := range labs {
			switch w.State {
			case WarmMaking:
				c.Making++
			case WarmReady:
				c.Ready++
			}
		}
		pools[id] = c
	}
	raw, err := s.rdb.HGetAll(ctx, s.warmKey("claims")).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("read warm claims: %w", err)
	}
	claims := map[string]int64{WarmOutcomeClaimed: 0, WarmOutcomeEmpty: 0}
	for k, v := range raw {
		claims[k], _ = strconv.ParseInt(v, 10, 64)
	}
	return pools, claims, nil
}

// WarmReplacements answers how many warm labs were taken out of their
// pools to be replaced so far, by reason (every one of
// WarmReplacedReasons), for metrics.
func (s *Store) WarmReplacements(ctx context.Context) (map[string]int64, error) {
	raw, err := s.rdb.HGetAll(ctx, s.warmKey("replaced")).Result()
	if err != nil {
		return nil, fmt.Errorf("read warm replacements: %w", err)
	}
	out := make(map[string]int64, len(WarmReplacedReasons))
	for _, r := range WarmReplacedReasons {
		out[r] = 0
	}
	for k, v := range raw {
		out[k], _ = strconv.ParseInt(v, 10, 64)
	}
	return out, nil
}

// LabsInUse maps the lab id of every session not ended that runs in a
// lab of another id (a claimed warm lab) to that session, from the
// index: the reaper must never take such a lab for an orphan.
func (s *Store) LabsInUse(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	err := s.summaries(ctx, func(all map[string]*Summary) {
		for id, sum := range all {
			if sum.LabID != "" && !sum.Status.Terminal() {
				out[sum.LabID] = id
			}
		}
	})
	return out, err
}
