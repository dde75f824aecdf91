package api

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"syscall"

	"github.com/gofiber/fiber/v2"
	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/ratelimit"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
)

// Errors the API returns itself.
var (
	errAuth      = errors.New("authentication required")
	errForbidden = errors.New("not allowed")
	errBadJSON   = errors.New("request body is not valid JSON")
)

// msgNoSpace is what a client reads when the state directory is full: the
// request's write failed whole (files are written atomically), nothing was
// stored, and only the staff can make room. The exam page shows it as
// "Not saved (…); retrying…".
const msgNoSpace = "the exam server has run out of disk space; please tell the exam staff"

// msgUnreachable is what a client reads when a service the platform
// keeps its index and queues in (Redis) does not answer: the words of the
// error would name internal addresses, and a moment later it may work.
const msgUnreachable = "the exam server is briefly unavailable; please try again in a moment"

// unreachable reports whether err is a backing service not answering: a
// connection that failed, or a Redis still loading its data after a
// restart.
func unreachable(err error) bool {
	var ne net.Error
	var re redis.Error
	return errors.As(err, &ne) || errors.Is(err, redis.ErrPoolTimeout) ||
		(errors.As(err, &re) && strings.HasPrefix(re.Error(), "LOADING"))
}

// httpError is an error with the status it maps to.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func fail(status int, msg string) error { return &httpError{status: status, msg: msg} }

// statusOf maps an error from any package to an HTTP status. Only the api
// package knows about HTTP.
func statusOf(err error) int {
	var he *httpError
	var fe *fiber.Error
	switch {
	case errors.As(err, &he):
		return he.status
	case errors.As(err, &fe):
		return fe.Code
	case errors.Is(err, errAuth), errors.Is(err, store.ErrUnauthorized):
		return fiber.StatusUnauthorized
	case errors.Is(err, errForbidden):
		return fiber.StatusForbidden
	case errors.Is(err, sitting.ErrUnknownCode):
		return fiber.StatusUnauthorized
	case errors.Is(err, sitting.ErrNotOpen), errors.Is(err, sitting.ErrClosed):
		return fiber.StatusForbidden
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrNoSitting), errors.Is(err, store.ErrNoEntry):
		return fiber.StatusNotFound
	case errors.Is(err, store.ErrBadID), errors.Is(err, errBadJSON), errors.Is(err, store.ErrBadQuery), errors.Is(err, exam.ErrInvalid),
		errors.Is(err, session.ErrTooShort), errors.Is(err, sitting.ErrBadCode), errors.Is(err, sitting.ErrInvalid):
		return fiber.StatusBadRequest
	case errors.Is(err, ratelimit.ErrLimited):
		return fiber.StatusTooManyRequests
	case errors.Is(err, store.ErrTooLarge), errors.Is(err, sitting.ErrRosterTooLarge):
		return fiber.StatusRequestEntityTooLarge
	case errors.Is(err, store.ErrClosed), errors.Is(err, session.ErrNotAllowed), errors.Is(err, store.ErrExists), errors.Is(err, store.ErrLiveSession),
		errors.Is(err, store.ErrArchiveIncomplete), errors.Is(err, store.ErrNoCapacity):
		return fiber.StatusConflict
	case errors.Is(err, store.ErrLocked):
		return fiber.StatusServiceUnavailable
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fiber.StatusInsufficientStorage
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), unreachable(err):
		return fiber.StatusServiceUnavailable
	}
	return fiber.StatusInternalServerError
}

// errorHandler writes every error as {"error": "..."}; internal errors are
// logged in full and answered without detail, a full disk (507) and an
// unreachable Redis (503) in plain words. A rate limit's refusal also
// says when to come back, in Retry-After.
func errorHandler(log *slog.Logger) fiber.ErrorHandler {
	return func(c *fiber.Ctx, err error) error {
		code := statusOf(err)
		msg := err.Error()
		switch {
		case code == fiber.StatusInsufficientStorage:
			log.Error("request failed: no space left", "method", c.Method(), "path", c.Path(), "client", clientAddr(c), "err", err)
			msg = msgNoSpace
		case code == fiber.StatusServiceUnavailable && unreachable(err):
			log.Warn("request failed: a service is unreachable", "method", c.Method(), "path", c.Path(), "client", clientAddr(c), "err", err)
			msg = msgUnreachable
		case code >= 500 && code != fiber.StatusServiceUnavailable:
			log.Error("request failed", "method", c.Method(), "path", c.Path(), "client", clientAddr(c), "err", err)
			msg = "internal error"
		}
		var lim *ratelimit.Limited
		if errors.As(err, &lim) {
			c.Set(fiber.HeaderRetryAfter, strconv.Itoa(int(ratelimit.RetrySeconds(lim.RetryAfter).Seconds())))
		}
		return c.Status(code).JSON(fiber.Map{"error": msg})
	}
}
