package nomad_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/nomad"
)

// unreachableTimeout bounds each call against an agent that is not there;
// the point is that it ends on its own well before it.
const unreachableTimeout = 2 * time.Minute

// closedAddr is an address that refuses connections: a port this test
// listened on and closed.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// silentAgent is an address that takes connections and never answers.
func silentAgent(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return ln.Addr().String()
}

func runtimeAt(t *testing.T, address string) *nomad.Runtime {
	t.Helper()
	rt, err := nomad.New(nomad.Options{Client: &api.Config{Address: address}})
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func testSpec(t *testing.T) lab.Spec {
	t.Helper()
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: "unavail12345", Candidate: "test@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// TestUnreachableAgentIsUnavailable: an agent that refuses, a name that
// does not resolve, and an agent that answers 5xx (no cluster leader)
// all make Provision and Ping return lab.ErrUnavailable, and nothing
// else; a caller's own deadline is not taken for the cluster being down.
func TestUnreachableAgentIsUnavailable(t *testing.T) {
	var leaderless atomic.Int64
	noLeader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaderless.Add(1)
		http.Error(w, "No cluster leader", http.StatusInternalServerError)
	}))
	t.Cleanup(noLeader.Close)

	for _, tc := range []struct{ name, addr string }{
		{"refused", "http://" + closedAddr(t)},
		{"no such host", "http://examlab-no-such-agent.invalid:4646"},
		{"no cluster leader", noLeader.URL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := runtimeAt(t, tc.addr)
			ctx, cancel := context.WithTimeout(context.Background(), unreachableTimeout)
			defer cancel()
			start := time.Now()
			err := rt.Provision(ctx, testSpec(t))
			took := time.Since(start)
			if !errors.Is(err, lab.ErrUnavailable) {
				t.Fatalf("provision against %s: %v, want lab.ErrUnavailable", tc.name, err)
			}
			if errors.Is(err, lab.ErrNoCapacity) || ctx.Err() != nil {
				t.Fatalf("provision against %s ended by the test's deadline or as no capacity: %v", tc.name, err)
			}
			t.Logf("provision against %s: unavailable after %v: %v", tc.name, took.Round(time.Millisecond), err)
			if err := rt.Ping(ctx); !errors.Is(err, lab.ErrUnavailable) {
				t.Fatalf("ping against %s: %v, want lab.ErrUnavailable", tc.name, err)
			}
		})
	}
	if leaderless.Load() < 2 {
		t.Fatalf("the leaderless agent was asked %d times, want provision and ping both", leaderless.Load())
	}

	t.Run("silent agent", func(t *testing.T) {
		// An agent that takes the connection and never answers is found
		// out by Provision's first, bounded question.
		rt := runtimeAt(t, "http://"+silentAgent(t))
		ctx, cancel := context.WithTimeout(context.Background(), unreachableTimeout)
		defer cancel()
		start := time.Now()
		err := rt.Provision(ctx, testSpec(t))
		if !errors.Is(err, lab.ErrUnavailable) || ctx.Err() != nil {
			t.Fatalf("provision against a silent agent: %v, want lab.ErrUnavailable", err)
		}
		t.Logf("provision against a silent agent: unavailable after %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("caller's deadline", func(t *testing.T) {
		// The caller's deadline ends Provision before the agent is found
		// out, and that says nothing about the cluster.
		rt := runtimeAt(t, "http://"+silentAgent(t))
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		err := rt.Provision(ctx, testSpec(t))
		if err == nil || errors.Is(err, lab.ErrUnavailable) {
			t.Fatalf("provision cut short by its caller: %v, want an error that is not lab.ErrUnavailable", err)
		}
		// Ping is the question "does it answer": no answer is unavailable.
		if err := rt.Ping(ctx); !errors.Is(err, lab.ErrUnavailable) {
			t.Fatalf("ping of a silent agent: %v, want lab.ErrUnavailable", err)
		}
	})
}

// TestAnswersAreNotUnavailable: an agent that answers, even with a
// refusal of its own (403: no token), is not unavailable.
func TestAnswersAreNotUnavailable(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/status/leader") {
			_, _ = w.Write([]byte(`"127.0.0.1:4647"`))
			return
		}
		http.Error(w, "Permission denied", http.StatusForbidden)
	}))
	t.Cleanup(srv.Close)
	rt := runtimeAt(t, srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), unreachableTimeout)
	defer cancel()
	if err := rt.Ping(ctx); err != nil {
		t.Fatalf("ping of an agent with a leader: %v", err)
	}
	err := rt.Provision(ctx, testSpec(t))
	if err == nil || errors.Is(err, lab.ErrUnavailable) {
		t.Fatalf("provision refused by the agent: %v, want its refusal, not lab.ErrUnavailable", err)
	}
}
