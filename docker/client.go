// Package docker runs exam labs on one host through the Docker Engine API:
// a network and one container per node for every session.
package docker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// apiVersion pins the Engine API this client speaks. 1.41 is what Docker
// 20.10 serves; newer engines still accept it.
const apiVersion = "v1.41"

// defaultHost is the engine address used when neither Options.Host nor
// DOCKER_HOST names one.
const defaultHost = "unix:///var/run/docker.sock"

// apiError is a non-2xx answer from the engine.
type apiError struct {
	Status  int
	Message string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("docker engine: %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// statusOf returns the HTTP status of an engine error, or 0 when err did
// not come from an engine answer.
func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

func isNotFound(err error) bool { return statusOf(err) == http.StatusNotFound }
func isConflict(err error) bool { return statusOf(err) == http.StatusConflict }

// client is a small Engine API client: JSON requests, raw streams and
// hijacked connections for exec.
type client struct {
	http *http.Client
	// dial opens a fresh connection to the engine; hijacked exec streams
	// need one of their own.
	dial func(ctx context.Context) (net.Conn, error)
	// base is the scheme and authority requests are addressed to.
	base string
}

// newClient parses host (unix:///path or tcp://host:port) and returns a
// client for it. TLS is not supported: the engine is expected on a local
// socket or a trusted private address.
func newClient(host string) (*client, error) {
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("parse docker host %q: %w", host, err)
	}
	var network, addr, base string
	switch u.Scheme {
	case "unix":
		network, addr = "unix", u.Path
		if addr == "" {
			return nil, fmt.Errorf("parse docker host %q: missing socket path", host)
		}
		// The authority is ignored on a unix socket; any name will do.
		base = "http://docker"
	case "tcp", "http":
		network, addr = "tcp", u.Host
		if u.Port() == "" {
			addr = net.JoinHostPort(u.Hostname(), "2375")
		}
		base = "http://" + addr
	default:
		return nil, fmt.Errorf("parse docker host %q: scheme must be unix:// or tcp://", host)
	}
	d := net.Dialer{Timeout: dialTimeout}
	dial := func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, network, addr) }
	tr := &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &client{http: &http.Client{Transport: tr}, dial: dial, base: base}, nil
}

func (c *client) url(path string, q url.Values) string {
	s := c.base + "/" + apiVersion + path
	if len(q) > 0 {
		s += "?" + q.Encode()
	}
	return s
}

// rawBody is a request body sent as it is (a tar archive), not as JSON.
type rawBody struct {
	r           io.Reader
	contentType string
}

func encodeBody(body any) (io.Reader, error) {
	if body == nil {
		return nil, nil
	}
	if rb, ok := body.(rawBody); ok {
		return rb.r, nil
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	return bytes.NewReader(b), nil
}

// stream sends a request and returns the response body for the caller to
// read and close. Non-2xx answers become *apiError.
func (c *client) stream(ctx context.Context, method, path string, q url.Values, body any) (*http.Response, error) {
	rd, err := encodeBody(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), rd)
	if err != nil {
		return nil, err
	}
	if rb, ok := body.(rawBody); ok {
		req.Header.Set("Content-Type", rb.contentType)
	} else if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, unavailable(ctx, err)
	}
	if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusNotModified {
		defer resp.Body.Close()
		return nil, unavailable(ctx, readError(resp))
	}
	return resp, nil
}

// do sends a request and decodes a JSON answer into out (nil discards it).
// 304 Not Modified, the engine's "already in that state", is success.
func (c *client) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	resp, err := c.stream(ctx, method, path, q, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s answer: %w", method, path, err)
	}
	return nil
}

func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var m struct {
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &m) == nil && m.Message != "" {
		msg = m.Message
	}
	return &apiError{Status: resp.StatusCode, Message: msg}
}

// hijack sends a request that upgrades the connection to a raw duplex
// stream, as exec start does, and returns the connection together with a
// reader holding whatever the engine sent after its answer.
func (c *client) hijack(ctx context.Context, path string, body any) (net.Conn, *bufio.Reader, error) {
	rd, err := encodeBody(body)
	if err != nil {
		return nil, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url(path, nil), rd)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "tcp")

	conn, err := c.dial(ctx)
	if err != nil {
		return nil, nil, unavailable(ctx, err)
	}
	// Until the upgrade is answered, ctx bounds the handshake.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (net.Conn, *bufio.Reader, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, err
	}
	if err := req.Write(conn); err != nil {
		return fail(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fail(err)
	}
	switch resp.StatusCode {
	case http.StatusSwitchingProtocols, http.StatusOK:
	default:
		err := readError(resp)
		resp.Body.Close()
		return fail(err)
	}
	if !stop() {
		// ctx ended while the answer arrived; the deadline may be set.
		return fail(ctx.Err())
	}
	return conn, br, nil
}
