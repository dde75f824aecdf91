// Package workers runs the session lifecycle's asynq handlers. Every
// handler is idempotent: run twice, or killed halfway and run again, it
// converges to the same end state with nothing duplicated or leaked.
package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// labRuntime is what the handlers need of a lab runtime (docker or nomad).
type labRuntime interface {
	Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error)
	Provision(ctx context.Context, spec lab.Spec) error
	Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error)
	Capture(ctx context.Context, sessionID string, nodes []string, mode lab.SnapshotMode, save lab.SaveFunc) ([]lab.NodeCapture, error)
	Logs(ctx context.Context, sessionID, node string, w io.Writer) error
	Destroy(ctx context.Context, sessionID string) error
	ResetNode(ctx context.Context, spec lab.Spec, node string) error
	Labs(ctx context.Context) ([]string, error)
	Ping(ctx context.Context) error
}

// enqueuer chains follow-up tasks (archive → cleanup) and queues the
// provision of sessions the admission queue admits.
type enqueuer interface {
	Provision(ctx context.Context, sessionID string, round int) (bool, error)
	Archive(ctx context.Context, sessionID, reason string) (bool, error)
	ArchiveRound(ctx context.Context, sessionID, reason string, round int) (bool, error)
	CleanupRound(ctx context.Context, sessionID, reason string, round int) (bool, error)
}

// Observer receives lifecycle measurements (metrics). All methods may be
// called concurrently.
type Observer interface {
	Provisioned(d time.Duration, ok bool)
	Archived(d time.Duration, bytes int64, ok bool)
	// Leftovers counts parts of labs put on record as left behind by the
	// runtime (added) and records dropped once they were gone (cleared).
	Leftovers(added, cleared int)
}

// gradingObserver receives grading measurements (metrics).
type gradingObserver interface {
	grading.Observer
	Graded(trigger string, d time.Duration)
}

type nopObserver struct{}

func (nopObserver) Provisioned(time.Duration, bool)     {}
func (nopObserver) Archived(time.Duration, int64, bool) {}
func (nopObserver) Leftovers(int, int)                  {}

// Options wires the handlers. Store, Runtime, Enqueuer and Exams are required.
type Options struct {
	Store    *store.Store
	Runtime  labRuntime
	Enqueuer enqueuer
	// Exams resolves a session's exam id.
	Exams func(id string) (*exam.Exam, bool)
	// RuntimeName is recorded in manifests ("docker", "nomad").
	RuntimeName string
	// Snapshot is the mode labs are archived in; empty means
	// lab.SnapshotChanges.
	Snapshot lab.SnapshotMode
	// ProvisionTimeout bounds one provision attempt; default 5m.
	ProvisionTimeout time.Duration
	// ProgressEvery is how often a lab's node states are read while a
	// worker changes the lab, for the API to show (progress.go);
	// default 2s: each read inspects every node, and in a herd of starts
	// the engine is the bottleneck.
	ProgressEvery time.Duration
	// LeaseTTL and LeaseRenew set the work lease a provision, archive or
	// cleanup holds while it runs (holdLease); defaults scheduler.LeaseTTL
	// and scheduler.LeaseRenew.
	LeaseTTL   time.Duration
	LeaseRenew time.Duration
	// ActiveProvisions lists the provision tasks the queue has handed to
	// a worker (scheduler.ActiveProvisions): the restart sweep restarts
	// those whose worker never took the session's lease (it died between
	// the two) after UnleasedGrace, default scheduler.UnleasedGrace,
	// instead of waiting for the queue to give the task up. Nil leaves
	// them to the queue.
	ActiveProvisions func(context.Context) ([]scheduler.SessionPayload, error)
	UnleasedGrace    time.Duration
	// RetentionDays deletes terminal sessions older than this; 0 disables.
	RetentionDays   int
	RetentionDryRun bool
	Observer        Observer
	// Grading hears of every check the grader runs and every grading
	// (metrics); optional.
	Grading gradingObserver
	// TerminalWait bounds how long grading waits for the relays to close
	// a submitted session's terminals; default 15s.
	TerminalWait time.Duration
	// GradingSlots bounds how many gradings this worker runs at once;
	// default 4. At a deadline every session is graded together, and a
	// check's own timeouts (a ping's -W, the check's timeout) count in
	// wall time: on an engine starting hundreds of execs at once, checks
	// that pass on a quiet machine would fail. Archives past the bound
	// wait for a slot before their grading budget starts.
	GradingSlots int
	Logger       *slog.Logger
	Now          func() time.Time
}

// Handlers holds the lifecycle handlers.
type Handlers struct {
	o   Options
	log *slog.Logger
	// gradeSlots holds a token per grading running (Options.GradingSlots).
	gradeSlots chan struct{}
	// unleased is when this process's restart sweep first saw each
	// active provision task (by session and round) without its lease.
	unleasedMu sync.Mutex
	unleased   map[unleasedRun]time.Time
}

// New checks o and returns the handlers.
func New(o Options) (*Handlers, error) {
	if o.Store == nil || o.Runtime == nil || o.Enqueuer == nil || o.Exams == nil {
		return nil, errors.New("new workers: store, runtime, enqueuer and exams are required")
	}
	if o.Snapshot == "" {
		o.Snapshot = lab.SnapshotChanges
	}
	if o.ProvisionTimeout == 0 {
		o.ProvisionTimeout = 5 * time.Minute
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 2 * time.Second
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = scheduler.LeaseTTL
	}
	if o.LeaseRenew <= 0 {
		o.LeaseRenew = scheduler.LeaseRenew
	}
	if o.UnleasedGrace <= 0 {
		o.UnleasedGrace = scheduler.UnleasedGrace
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	if o.TerminalWait <= 0 {
		o.TerminalWait = 15 * time.Second
	}
	if o.GradingSlots <= 0 {
		o.GradingSlots = 4
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Handlers{o: o, log: o.Logger, gradeSlots: make(chan struct{}, o.GradingSlots), unleased: map[unleasedRun]time.Time{}}, nil
}

// Mux registers every handler on a new ServeMux.
func (h *Handlers) Mux() *asynq.ServeMux {
	mux := asynq.NewServeMux()
	mux.HandleFunc(scheduler.TypeProvision, h.Provision)
	mux.HandleFunc(scheduler.TypeArchive, h.Archive)
	mux.HandleFunc(scheduler.TypeCleanup, h.Cleanup)
	mux.HandleFunc(scheduler.TypeSnapshot, h.Snapshot)
	mux.HandleFunc(scheduler.TypeResetNode, h.ResetNode)
	mux.HandleFunc(scheduler.TypeExpire, h.Expire)
	mux.HandleFunc(scheduler.TypeReap, h.Reap)
	mux.HandleFunc(scheduler.TypeAdmission, h.Admission)
	mux.HandleFunc(scheduler.TypeRetention, h.Retention)
	mux.HandleFunc(scheduler.TypeLostSweep, h.LostSweep)
	mux.HandleFunc(scheduler.TypeReprovision, h.Reprovision)
	mux.HandleFunc(scheduler.TypeReviewStart, h.ReviewStart)
	mux.HandleFunc(scheduler.TypeReviewEnd, h.ReviewEnd)
	mux.HandleFunc(scheduler.TypeReviewRegrade, h.ReviewRegrade)
	mux.HandleFunc(scheduler.TypeWarmProvision, h.WarmProvision)
	mux.HandleFunc(scheduler.TypeWarmRefill, h.WarmRefill)
	return mux
}

// spec renders the session's lab spec from its exam.
func (h *Handlers) spec(sess *session.Session) (lab.Spec, error) {
	ex, ok := h.o.Exams(sess.ExamID)
	if !ok {
		return lab.Spec{}, fmt.Errorf("session %s: unknown exam %q: %w", sess.ID, sess.ExamID, asynq.SkipRetry)
	}
	l, err := lab.NewSpec(ex, labSession(sess))
	if err != nil {
		return l, fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	return l, nil
}

// labSession is what a session's lab spec is rendered from: the lab's id
// (sess.Lab). A lab claimed from the warm pool was made before anyone
// claimed it, so its spec names no candidate: rendered the same as when
// it was made, a reprovision or node reset finds the lab it made (a Nomad
// job whose meta changed would be replaced as a whole).
func labSession(sess *session.Session) lab.Session {
	if sess.FromWarmPool() {
		return lab.Session{ID: sess.Lab()}
	}
	return lab.Session{ID: sess.ID, Candidate: sess.Email}
}

// session loads the payload's session; a session that does not exist can
// never be handled, so that is a permanent failure.
func (h *Handlers) session(ctx context.Context, t *asynq.Task) (scheduler.SessionPayload, *session.Session, error) {
	p, err := scheduler.ParseSessionPayload(t)
	if err != nil {
		return p, nil, err
	}
	sess, err := h.o.Store.Get(ctx, p.SessionID)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrBadID) {
		return p, nil, fmt.Errorf("%s %s: %w: %w", t.Type(), p.SessionID, err, asynq.SkipRetry)
	}
	if err != nil {
		return p, nil, fmt.Errorf("%s %s: %w", t.Type(), p.SessionID, err)
	}
	return p, sess, nil
}

// lastAttempt reports whether this run is the task's final retry.
func lastAttempt(ctx context.Context) bool {
	n, ok1 := asynq.GetRetryCount(ctx)
	max, ok2 := asynq.GetMaxRetry(ctx)
	return ok1 && ok2 && n >= max
}
