package scheduler

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hibiken/asynq"
)

// activePage is how many active tasks one inspector call lists; a queue
// holds as many as its workers run at once.
const activePage = 500

// ActiveProvisions lists the provisions the queue has handed to a worker
// and not had back: the payloads of QueueCritical's active provision
// tasks. A task whose worker died stays active until asynq's own lease
// on it runs out (30 s) and its recoverer passes (up to a minute more).
func ActiveProvisions(insp *asynq.Inspector) ([]SessionPayload, error) {
	var out []SessionPayload
	for page := 1; ; page++ {
		tasks, err := insp.ListActiveTasks(QueueCritical, asynq.PageSize(activePage), asynq.Page(page))
		if errors.Is(err, asynq.ErrQueueNotFound) {
			return nil, nil // nothing was ever queued there
		}
		if err != nil {
			return nil, fmt.Errorf("list active provisions: %w", err)
		}
		for _, t := range tasks {
			if t.Type != TypeProvision {
				continue
			}
			var p SessionPayload
			if err := json.Unmarshal(t.Payload, &p); err != nil || p.SessionID == "" {
				continue // its worker fails it for good (ParseSessionPayload)
			}
			out = append(out, p)
		}
		if len(tasks) < activePage {
			return out, nil
		}
	}
}
