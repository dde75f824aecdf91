package docker

import (
	"context"
	"net/http"
	"time"

	"github.com/examlab/examlab/lab"
)

// dialTimeout bounds connecting to the engine: an engine on a tcp address
// that drops packets must be reported unavailable in seconds, not after
// the operating system gives up. (A unix socket that is not there fails
// at once.)
const dialTimeout = 5 * time.Second

// unreachable reports whether err says the engine could not be asked or
// dropped the connection before it answered: no socket, refused, timed
// out, no such host, reset. A gateway's 502/503/504 in front of a tcp
// engine says the same. The engine's own answers, 500s included (a
// driver's failure), are not.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	if s := statusOf(err); s != 0 {
		return s == http.StatusBadGateway || s == http.StatusServiceUnavailable || s == http.StatusGatewayTimeout
	}
	return lab.NetworkUnreachable(err)
}

// unavailable wraps err with lab.ErrUnavailable when it says the engine
// could not be reached, unless ctx ended first: a caller that gave up has
// not learned that the engine is down.
func unavailable(ctx context.Context, err error) error {
	return lab.MarkUnavailable(ctx, err, unreachable)
}
