package platform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/hibiken/asynq"
)

// asynqLogger sends asynq's own logging through slog.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Fatal(args ...any) {
	a.l.Error(fmt.Sprint(args...), "component", "asynq", "fatal", true)
}

// taskFailures logs every failed run of a lifecycle task: asynq retries
// it quietly otherwise, and an operator (or a test) would see a session
// sit in its state with no word of why.
func taskFailures(l *slog.Logger) asynq.ErrorHandler {
	return asynq.ErrorHandlerFunc(func(ctx context.Context, t *asynq.Task, err error) {
		id, _ := asynq.GetTaskID(ctx)
		n, _ := asynq.GetRetryCount(ctx)
		max, _ := asynq.GetMaxRetry(ctx)
		level := slog.LevelWarn
		if n >= max || errors.Is(err, asynq.SkipRetry) {
			level = slog.LevelError
		}
		l.Log(ctx, level, "task failed", "component", "worker", "task", t.Type(), "id", id, "retry", n, "max_retry", max, "err", err)
	})
}
