package lab

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
)

// unavailableError says a runtime's service could not be asked:
// errors.Is matches both ErrUnavailable and the cause.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string   { return e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{ErrUnavailable, e.err} }

// Unavailable wraps err, a failure to reach a runtime's service, so that
// it matches ErrUnavailable and still matches err, with err's words.
func Unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	return &unavailableError{err}
}

// MarkUnavailable wraps err with Unavailable when unreachable says it is
// a failure to reach the service, unless ctx ended first: a caller that
// gave up has not learned that the service is down.
func MarkUnavailable(ctx context.Context, err error, unreachable func(error) bool) error {
	if err == nil || errors.Is(err, ErrUnavailable) || ctx.Err() != nil || !unreachable(err) {
		return err
	}
	return &unavailableError{err}
}

// NetworkUnreachable reports whether err says a service could not be
// reached over the network, whatever its protocol above: no socket,
// refused, no such host, timed out, or the connection closed before an
// answer. Each runtime adds what its service's own answers mean.
func NetworkUnreachable(err error) bool {
	var op *net.OpError
	var dns *net.DNSError
	var ne net.Error
	switch {
	case errors.As(err, &op), errors.As(err, &dns):
		return true
	case errors.As(err, &ne) && ne.Timeout():
		return true
	}
	var ue *url.Error
	return errors.As(err, &ue) && (errors.Is(ue.Err, io.EOF) || errors.Is(ue.Err, io.ErrUnexpectedEOF))
}
