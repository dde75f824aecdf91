// Package scheduler is how a session's life is carried out over asynq: the
// task contracts workers implement (type names, payloads, constructors
// with idempotent task ids), the retry policy, the transitions that also
// queue work (Start, Submit), and the periodic sweeps. The life itself —
// states and the transitions between them — is package session.
package scheduler

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
)

// Task types. One per lifecycle operation on a session, plus the periodic
// sweeps that keep the platform honest.
const (
	TypeProvision = "session:provision"
	TypeArchive   = "session:archive"
	TypeCleanup   = "session:cleanup"
	TypeSnapshot  = "session:snapshot" // admin snapshot of a live lab; the lab stays
	TypeResetNode = "session:reset-node"
	TypeExpire    = "sweep:expire" // periodic: submit sessions past their deadline
	TypeReap      = "sweep:reap"   // periodic: remove labs whose session is gone
	TypeRetention = "sweep:retention"
	TypeAdmission = "sweep:admission" // periodic: repair the admission queue from the records, admit
)

// Queues, by urgency: a candidate waits on provision; archive and cleanup
// can trail; sweeps are background.
const (
	QueueCritical = "critical"
	QueueDefault  = "default"
	QueueLow      = "low"
)

// Queues is the weighting workers serve the queues with.
var Queues = map[string]int{QueueCritical: 6, QueueDefault: 3, QueueLow: 1}

// SessionPayload names the session a lifecycle task acts on.
type SessionPayload struct {
	SessionID string `json:"session_id"`
	// Reason says why the task was enqueued (submit, deadline, admin…).
	Reason string `json:"reason,omitempty"`
	// Node is set for node-scoped tasks (reset-node).
	Node string `json:"node,omitempty"`
	// Nonce distinguishes repeatable operations (admin snapshots, resets)
	// so that each request gets its own task ID.
	Nonce string `json:"nonce,omitempty"`
	// Round is the round of the operation the task carries on, as the
	// session counted it when the task was enqueued: its ProvisionRound
	// for a provision (each admission after a park, and each restart of a
	// provision whose worker died, is a new round), its ArchiveRestarts
	// or CleanupRestarts for an archive or cleanup (a restart after the
	// worker died). Each round has a task ID of its own, and a task of an
	// older round finds nothing to do.
	Round int `json:"round,omitempty"`
}

// ParseSessionPayload decodes and checks a lifecycle payload. A payload
// that cannot be decoded will never succeed, so the error skips retries.
func ParseSessionPayload(t *asynq.Task) (SessionPayload, error) {
	var p SessionPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return p, fmt.Errorf("decode %s payload: %v: %w", t.Type(), err, asynq.SkipRetry)
	}
	if p.SessionID == "" {
		return p, fmt.Errorf("decode %s payload: no session id: %w", t.Type(), asynq.SkipRetry)
	}
	return p, nil
}

// TaskID is the idempotent id of an operation on a session: enqueueing the
// same (session, operation) twice yields asynq.ErrTaskIDConflict.
func TaskID(op, sessionID string, extra ...string) string {
	id := op + ":" + sessionID
	for _, e := range extra {
		if e != "" {
			id += ":" + e
		}
	}
	return id
}

// retention keeps completed task ids long enough that a duplicate request
// arriving later is still recognised as done.
const retention = 24 * time.Hour

func newSessionTask(typ, queue string, p SessionPayload, maxRetry int, timeout time.Duration, extra ...string) (*asynq.Task, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode %s payload: %w", typ, err)
	}
	return asynq.NewTask(typ, b,
		asynq.TaskID(TaskID(typ, p.SessionID, extra...)),
		asynq.Queue(queue),
		asynq.MaxRetry(maxRetry),
		asynq.Timeout(timeout),
		asynq.Retention(retention),
	), nil
}

// NewProvisionTask brings a session's lab up.
func NewProvisionTask(sessionID string) (*asynq.Task, error) {
	return NewProvisionRoundTask(sessionID, 0)
}

// NewProvisionRoundTask brings up the lab of a session in its round'th
// provision (session.Session.ProvisionRound): admitted again after a park,
// or restarted after its worker died; round 0 is its first admission.
func NewProvisionRoundTask(sessionID string, round int) (*asynq.Task, error) {
	return newSessionTask(TypeProvision, QueueCritical, SessionPayload{SessionID: sessionID, Round: round}, 8, 10*time.Minute, roundSuffix("p", round))
}

// NewArchiveTask snapshots a submitted session's lab, then chains cleanup.
func NewArchiveTask(sessionID, reason string) (*asynq.Task, error) {
	return NewArchiveRoundTask(sessionID, reason, 0)
}

// NewArchiveRoundTask is the archive of a session in its round'th round
// (session.Session.ArchiveRestarts): restarted after its worker died;
// round 0 is the archive its submit enqueued.
func NewArchiveRoundTask(sessionID, reason string, round int) (*asynq.Task, error) {
	return newSessionTask(TypeArchive, QueueDefault, SessionPayload{SessionID: sessionID, Reason: reason, Round: round}, 12, 30*time.Minute, roundSuffix("a", round))
}

// NewCleanupTask removes a session's lab. The session record stays.
func NewCleanupTask(sessionID, reason string) (*asynq.Task, error) {
	return NewCleanupRoundTask(sessionID, reason, 0)
}

// NewCleanupRoundTask is the cleanup of a session in its round'th round
// (session.Session.CleanupRestarts).
func NewCleanupRoundTask(sessionID, reason string, round int) (*asynq.Task, error) {
	return newSessionTask(TypeCleanup, QueueDefault, SessionPayload{SessionID: sessionID, Reason: reason, Round: round}, 12, 5*time.Minute, roundSuffix("c", round))
}

// roundSuffix names a round after the first in a task ID: "p1", "a2".
func roundSuffix(op string, round int) string {
	if round <= 0 {
		return ""
	}
	return op + strconv.Itoa(round)
}

// NewSnapshotTask archives a live lab on an admin's request; each request
// carries its own nonce so two snapshots a minute apart both run.
func NewSnapshotTask(sessionID, nonce string) (*asynq.Task, error) {
	return newSessionTask(TypeSnapshot, QueueDefault, SessionPayload{SessionID: sessionID, Reason: "admin", Nonce: nonce}, 5, 30*time.Minute, nonce)
}

// NewResetNodeTask replaces one node of a live lab with a fresh container.
func NewResetNodeTask(sessionID, node, nonce string) (*asynq.Task, error) {
	return newSessionTask(TypeResetNode, QueueCritical, SessionPayload{SessionID: sessionID, Node: node, Nonce: nonce}, 5, 5*time.Minute, node, nonce)
}

// NewExpireTask, NewReapTask, NewAdmissionTask and NewRetentionTask are
// the periodic sweeps.
// They carry no session; Periodic gives each tick a task id from its slot
// on the wall-clock grid, so that several worker processes enqueue a tick
// once.
func NewExpireTask() *asynq.Task {
	return asynq.NewTask(TypeExpire, nil, asynq.Queue(QueueLow), asynq.MaxRetry(1), asynq.Timeout(5*time.Minute))
}

// NewReapTask finds and removes labs whose session is gone.
func NewReapTask() *asynq.Task {
	return asynq.NewTask(TypeReap, nil, asynq.Queue(QueueLow), asynq.MaxRetry(1), asynq.Timeout(10*time.Minute))
}

// NewAdmissionTask repairs the admission queue and its slots from the
// session records and admits whom a free slot allows.
func NewAdmissionTask() *asynq.Task {
	return asynq.NewTask(TypeAdmission, nil, asynq.Queue(QueueLow), asynq.MaxRetry(1), asynq.Timeout(5*time.Minute))
}

// NewRetentionTask deletes archived sessions older than the retention policy.
func NewRetentionTask() *asynq.Task {
	return asynq.NewTask(TypeRetention, nil, asynq.Queue(QueueLow), asynq.MaxRetry(1), asynq.Timeout(30*time.Minute))
}

// RetryDelay is the retry policy of every lifecycle task: exponential from
// 2s, doubling per retry up to 2m, each delay spread by ±20% so that tasks
// failed together (a herd of provisions during an engine hiccup) do not
// come back together.
func RetryDelay(n int, _ error, _ *asynq.Task) time.Duration {
	d := 2 * time.Second << min(max(n, 0), 6)
	d = min(d, 2*time.Minute)
	spread := int64(d) * 2 / 5 // 40% wide, centred on d
	return time.Duration(int64(d) - spread/2 + rand.Int64N(spread))
}
