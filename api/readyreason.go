package api

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/examlab/examlab/lab"
)

// readyReason says in a few fixed words why a readiness check failed:
// enough for an operator to know where to look, nothing of the error's
// own text (addresses, paths), which the log has.
func readyReason(err error) string {
	var dns *net.DNSError
	msg := strings.ToLower(err.Error())
	why := "not answering"
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		why = "connection refused"
	case errors.Is(err, syscall.ENOENT), errors.Is(err, os.ErrNotExist):
		why = "no such socket"
	case errors.Is(err, syscall.EACCES), errors.Is(err, os.ErrPermission):
		why = "permission denied"
	case errors.As(err, &dns):
		why = "the name does not resolve"
	case strings.Contains(msg, "no cluster leader"):
		why = "no cluster leader"
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		why = "timed out"
	case strings.Contains(msg, "response code: 5"):
		why = "server error"
	}
	if errors.Is(err, lab.ErrUnavailable) {
		return "unreachable: " + why
	}
	return why
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
