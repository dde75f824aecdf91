package docker

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// TestUnreachableEngineIsUnavailable: an engine socket that is not there,
// and a tcp engine address that refuses, make Provision and Ping return
// lab.ErrUnavailable at once.
func TestUnreachableEngineIsUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := "tcp://" + ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, host string }{
		{"no socket", "unix://" + filepath.Join(t.TempDir(), "docker.sock")},
		{"refused", refusing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(Options{Host: tc.host, GraderBusybox: "none"})
			if err != nil {
				t.Fatal(err)
			}
			spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: "unavail12345", Candidate: "test@example.com"})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			err = r.Provision(ctx, spec)
			if !errors.Is(err, lab.ErrUnavailable) || ctx.Err() != nil {
				t.Fatalf("provision against %s: %v, want lab.ErrUnavailable", tc.name, err)
			}
			t.Logf("provision against %s: unavailable after %v: %v", tc.name, time.Since(start).Round(time.Millisecond), err)
			if err := r.Ping(ctx); !errors.Is(err, lab.ErrUnavailable) {
				t.Fatalf("ping against %s: %v, want lab.ErrUnavailable", tc.name, err)
			}
		})
	}
}

// TestEngineAnswersAreNotUnavailable: the engine's own refusals, 500s
// included, are not taken for the engine being down.
func TestEngineAnswersAreNotUnavailable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&apiError{Status: 500, Message: "driver failed programming external connectivity"}, false},
		{&apiError{Status: 404, Message: "No such container"}, false},
		{&apiError{Status: 503, Message: "engine starting"}, true},
		{&net.OpError{Op: "dial", Net: "unix", Err: errors.New("connect: no such file or directory")}, true},
	} {
		if got := errors.Is(unavailable(context.Background(), tc.err), lab.ErrUnavailable); got != tc.want {
			t.Errorf("%v: unavailable %v, want %v", tc.err, got, tc.want)
		}
	}
}
