package lab

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// ExecStartTTL bounds how long an exec start is waited for by a freeze:
// the note of a start whose outcome its runtime could not learn (the
// request was cut off, the process that made it died) lapses after it.
const ExecStartTTL = 60 * time.Second

// ExecGate keeps exec starts into a lab and the lab's freeze apart, across
// every process that reaches the lab. A freeze is the engine's cgroup
// freezer (Docker's pause): a process that joins a frozen cgroup, as an
// exec's init does while it starts, stops in the kernel mid-start, and
// the engine stops answering for that container, unpause included, until
// the cgroup is thawed by hand. The engine refuses an exec into a node
// that is already paused; only one whose start overlaps the pause hangs.
// So a runtime notes every exec start with BeginExec before it asks the
// engine, ends the note once the engine says the process runs (or has
// ended), and freezes only through Freeze, which waits for the notes.
type ExecGate interface {
	// BeginExec waits while the lab is frozen (until ctx ends), then notes
	// an exec start into it. The returned func ends the note: with true
	// once the start is known to be over, with false when it may still be
	// under way (the note then lapses after ExecStartTTL).
	BeginExec(ctx context.Context, labID string) (end func(settled bool), err error)
	// Freeze marks the lab frozen, so that no exec start begins, and waits
	// until every start noted before has ended or lapsed. thaw lifts the
	// mark; it must be called, once the lab's nodes run again, whatever
	// became of the freeze. A mark whose holder died lapses on its own.
	Freeze(ctx context.Context, labID string) (thaw func(), err error)
}

// LocalGate is an ExecGate for the execs of one process: enough where one
// process both runs the lab's execs and freezes it (tests, tools), never
// where a relay and a worker are apart.
type LocalGate struct {
	ttl    time.Duration
	mu     sync.Mutex
	labs   map[string]*gateLab
	change chan struct{} // closed and replaced on every change
}

type gateLab struct {
	frozen bool
	starts map[int]time.Time // start id → when its note lapses
	next   int
}

var _ ExecGate = (*LocalGate)(nil)

// NewLocalGate returns an empty gate whose unsettled notes lapse after
// ttl; zero means ExecStartTTL.
func NewLocalGate(ttl time.Duration) *LocalGate {
	if ttl <= 0 {
		ttl = ExecStartTTL
	}
	return &LocalGate{ttl: ttl, labs: map[string]*gateLab{}, change: make(chan struct{})}
}

// changedLocked wakes every waiter. g.mu must be held.
func (g *LocalGate) changedLocked() {
	close(g.change)
	g.change = make(chan struct{})
}

func (g *LocalGate) labLocked(id string) *gateLab {
	l := g.labs[id]
	if l == nil {
		l = &gateLab{starts: map[int]time.Time{}}
		g.labs[id] = l
	}
	return l
}

// dropLapsedLocked forgets the notes that lapsed by now. The gate's mu
// must be held.
func (l *gateLab) dropLapsedLocked(now time.Time) {
	for id, t := range l.starts {
		if !t.After(now) {
			delete(l.starts, id)
		}
	}
}

// dropLocked forgets l, the entry of lab id, once nothing is noted in it.
// An entry already replaced (a late end of a note that lapsed) is left
// alone. g.mu must be held.
func (g *LocalGate) dropLocked(id string, l *gateLab) {
	if !l.frozen && len(l.starts) == 0 && g.labs[id] == l {
		delete(g.labs, id)
	}
}

// lockUnfrozen waits until lab id is not frozen and returns its entry
// with g.mu held, or ctx's error without it.
func (g *LocalGate) lockUnfrozen(ctx context.Context, id string) (*gateLab, error) {
	for {
		g.mu.Lock()
		l := g.labLocked(id)
		if !l.frozen {
			return l, nil
		}
		ch := g.change
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// BeginExec implements ExecGate.
func (g *LocalGate) BeginExec(ctx context.Context, labID string) (func(bool), error) {
	l, err := g.lockUnfrozen(ctx, labID)
	if err != nil {
		return nil, fmt.Errorf("exec in lab %s: waiting for its capture to end: %w", labID, err)
	}
	l.dropLapsedLocked(time.Now())
	id := l.next
	l.next++
	l.starts[id] = time.Now().Add(g.ttl)
	g.mu.Unlock()
	var once sync.Once
	return func(settled bool) {
		if !settled {
			return // the note lapses at its time
		}
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			delete(l.starts, id)
			g.dropLocked(labID, l)
			g.changedLocked()
		})
	}, nil
}

// Freeze implements ExecGate. A second freeze of a frozen lab waits for
// the first one's thaw.
func (g *LocalGate) Freeze(ctx context.Context, labID string) (func(), error) {
	l, err := g.lockUnfrozen(ctx, labID)
	if err != nil {
		return nil, fmt.Errorf("freeze lab %s: %w", labID, err)
	}
	l.frozen = true
	g.mu.Unlock()
	var once sync.Once
	thaw := func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			l.frozen = false
			g.dropLocked(labID, l)
			g.changedLocked()
		})
	}
	for {
		g.mu.Lock()
		l.dropLapsedLocked(time.Now())
		var lapse time.Time
		for _, t := range l.starts {
			if lapse.IsZero() || t.Before(lapse) {
				lapse = t
			}
		}
		ch := g.change
		g.mu.Unlock()
		if lapse.IsZero() {
			return thaw, nil
		}
		timer := time.NewTimer(time.Until(lapse))
		select {
		case <-ch:
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			thaw()
			return nil, fmt.Errorf("freeze lab %s: waiting for exec starts: %w", labID, ctx.Err())
		}
		timer.Stop()
	}
}
