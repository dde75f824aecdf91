package workers

import (
	"context"
	"errors"

	"github.com/examlab/examlab/store"
)

// seal signs the ended session's folder. A folder that no longer matches
// an earlier seal is not signed again: the store has logged and
// audit-logged that, and retrying would not change it.
func (h *Handlers) seal(ctx context.Context, id string) error {
	if h.o.Store.SigningKey() == nil {
		return nil
	}
	_, err := h.o.Store.Seal(ctx, id)
	if errors.Is(err, store.ErrEvidence) {
		h.log.Error("session not sealed", "session", id, "err", err)
		return nil
	}
	return err
}
