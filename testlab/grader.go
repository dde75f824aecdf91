package testlab

import (
	"context"
	"strings"

	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
)

// Graded is the in-memory lab runtime for grading tests: it runs a
// check's snippet with the memory runtime's own sh and reports its exit
// code the way grading.Command does, since a memory node has no grader
// busybox to run the real command with. That a candidate cannot fool a
// check is the real runtimes' to prove.
type Graded struct {
	*labtest.Memory
}

var _ lab.Runtime = Graded{}

// NewGraded returns a Graded memory runtime.
func NewGraded() Graded { return Graded{labtest.NewMemory(labtest.MemoryOptions{})} }

// Exec runs a grader command (grading.Command: busybox sh -c WRAPPER
// check SNIPPET MARKER SECONDS) as the snippet followed by the marked
// exit code line, and any other command as it is.
func (g Graded) Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error) {
	if c := req.Cmd; len(c) == 8 && c[0] == grading.Busybox && c[4] == "check" {
		snippet, marker := c[5], c[6]
		req.Cmd = []string{"sh", "-c", snippet + "\nexamlabcode=$?\necho\necho " + marker + "$examlabcode"}
		req.Env = nil
		if strings.ContainsAny(marker, " '\"$;\n") {
			panic("testlab: a grader marker the memory shell would split: " + marker)
		}
	}
	return g.Memory.Exec(ctx, sessionID, node, req)
}
