package nomad

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/lab"
)

// An agent that cannot be reached must say so quickly: a start against it
// is parked (lab.ErrUnavailable) within seconds rather than after the
// operating system's own connect timeout (minutes for an address that
// drops packets).
const (
	// dialTimeout bounds connecting to the agent.
	dialTimeout = 5 * time.Second
	// answerMargin is how long past a blocking query's wait (and Nomad's
	// jitter of up to a sixteenth of it) the agent may take to start its
	// answer before it counts as not answering.
	answerMargin = 5 * time.Second
	// reachTimeout bounds the question Provision asks first: an agent
	// that takes the connection and never answers is found out in
	// seconds, not after a blocking query's wait.
	reachTimeout = 10 * time.Second
)

// reachable asks the agent for its leader under reachTimeout, so that a
// provision against an agent that does not answer fails at once as
// lab.ErrUnavailable instead of waiting out its first request.
// A caller that gave up first learned nothing about the agent.
func (r *Runtime) reachable(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	err := r.Ping(rctx)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("ask the agent: %w", ctx.Err())
	}
	return err
}

// httpClient is the Nomad API client's HTTP client when the config brings
// none: the API's own defaults (TLS 1.2 at least, HTTP/1 for exec's
// websockets, the config's TLS files) with a bounded connect and a bounded
// wait for an answer's headers. A unix socket keeps the API's own client.
func httpClient(cfg *api.Config, wait time.Duration) (*http.Client, error) {
	if strings.HasPrefix(cfg.Address, "unix:") {
		return nil, nil
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 10 * time.Second
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	t.ForceAttemptHTTP2 = false
	t.MaxIdleConnsPerHost = 16
	// Blocking queries hold their answer up to the wait (plus Nomad's
	// jitter of a sixteenth); anything slower is an agent not answering.
	t.ResponseHeaderTimeout = wait + wait/16 + answerMargin
	c := &http.Client{Transport: t}
	if err := api.ConfigureTLS(c, cfg.TLSConfig); err != nil {
		return nil, fmt.Errorf("configure nomad tls: %w", err)
	}
	return c, nil
}

// unreachable reports whether err says the agent could not be asked or
// could not answer: refused, timed out, no such host, the connection
// dropped, no cluster leader, or a 5xx answer from the agent. An answer
// the agent gave on purpose (404, 400, 409 …) is not.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	if s := statusOf(err); s != 0 {
		return s >= 500
	}
	msg := err.Error()
	if strings.Contains(msg, "No cluster leader") || strings.Contains(msg, "no cluster leader") {
		return true
	}
	return lab.NetworkUnreachable(err)
}

// unavailable wraps err with lab.ErrUnavailable when it says the agent
// could not be reached, unless ctx ended first: a caller that gave up has
// not learned that the cluster is down.
func unavailable(ctx context.Context, err error) error {
	return lab.MarkUnavailable(ctx, err, unreachable)
}
