package lab

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds of lab parts a runtime can fail to remove after the nodes are gone.
const (
	LeftoverNetwork = "network" // a Docker network (and the subnet it holds)
	LeftoverJob     = "job"     // a Nomad job that would not purge
)

// Leftover is one part of a lab that Destroy could not remove once every
// node of the lab was gone: an engine that will not let go of a network
// with no containers left in it, a job the servers would not purge.
type Leftover struct {
	Kind string
	// Name is the part's name on the runtime (network or job name).
	Name string
	// ID is the runtime's own id for it, when it has one.
	ID string
	// Subnet is the IPv4 subnet a network still holds; empty otherwise.
	Subnet string
	// Err is the runtime's refusal, in its own words.
	Err string
}

// LeftoverError is Destroy's answer when the lab's nodes are gone but
// some other part of it is not. The candidate's work is safe (nothing of
// it lives in those parts), so a caller ending a session may finish it and
// keep the leftovers on record for a later Destroy to retry.
type LeftoverError struct {
	SessionID string
	Leftovers []Leftover
}

func (e *LeftoverError) Error() string {
	parts := make([]string, len(e.Leftovers))
	for i, l := range e.Leftovers {
		parts[i] = fmt.Sprintf("%s %s: %s", l.Kind, l.Name, l.Err)
	}
	return fmt.Sprintf("lab %s: nodes removed, but the runtime kept %s", e.SessionID, strings.Join(parts, "; "))
}

// Leftovers returns the leftovers err reports, if it is (or wraps) a
// LeftoverError.
func Leftovers(err error) ([]Leftover, bool) {
	var le *LeftoverError
	if errors.As(err, &le) {
		return le.Leftovers, true
	}
	return nil, false
}
