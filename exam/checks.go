package exam

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Bounds on checks.
const (
	// DefaultCheckTimeout applies to a check that names no timeout.
	DefaultCheckTimeout = 10 * time.Second
	// MaxCheckTimeout is the longest one check may run.
	MaxCheckTimeout = 2 * time.Minute
	// MaxCandidateChecks bounds grading.candidate_checks.
	MaxCandidateChecks = 20
)

// Check judges one aspect of a task in the candidate's lab: Run is a shell
// snippet run as root in Node with tools the grader brings (never the
// node's own), and it passes when its exit code and trimmed standard output
// are what Expect says.
type Check struct {
	Name    string   `yaml:"name" json:"name"`
	Node    string   `yaml:"node" json:"node"`
	Run     string   `yaml:"run" json:"run"`
	Expect  Expect   `yaml:"expect,omitempty" json:"expect"`
	Points  int      `yaml:"points,omitempty" json:"points"`
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout"`
	// Hidden checks are never named to the candidate.
	Hidden bool `yaml:"hidden,omitempty" json:"hidden,omitempty"`
	// timeoutZero: the file wrote a timeout of zero, which Validate
	// refuses, where no timeout at all means the default.
	timeoutZero bool
}

// UnmarshalYAML reads a check as the decoder would, and tells a timeout
// written as zero from one not written at all. The decoder does not hand
// its strictness to a custom unmarshaler, so unknown keys of the check and
// of its expect are refused here.
func (c *Check) UnmarshalYAML(n *yaml.Node) error {
	if err := knownKeys(n, reflect.TypeFor[Check]()); err != nil {
		return err
	}
	if err := knownKeys(mappingValue(n, "expect"), reflect.TypeFor[Expect]()); err != nil {
		return err
	}
	type plain Check
	var p plain
	if err := n.Decode(&p); err != nil {
		return err
	}
	*c = Check(p)
	c.timeoutZero = mappingValue(n, "timeout") != nil && c.Timeout.Duration == 0 && c.Timeout.unparsed == ""
	return nil
}

// mappingValue is the value of key in mapping node n, or nil.
func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// knownKeys refuses a key of mapping node n that no yaml tag of struct typ
// names, the way the strict decoder words it.
func knownKeys(n *yaml.Node, typ reflect.Type) error {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	known := map[string]bool{}
	for f := range typ.Fields() {
		if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name != "" && name != "-" {
			known[name] = true
		}
	}
	var bad []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; !known[k.Value] {
			bad = append(bad, fmt.Sprintf("line %d: field %s not found in type %s", k.Line, k.Value, typ))
		}
	}
	if len(bad) > 0 {
		return &yaml.TypeError{Errors: bad}
	}
	return nil
}

// Expect is what a check must see. Exit defaults to 0; Output, when set,
// is a regular expression the trimmed standard output must match.
type Expect struct {
	Exit   *int   `yaml:"exit,omitempty" json:"exit,omitempty"`
	Output string `yaml:"output,omitempty" json:"output,omitempty"`
}

// ExitCode is the exit code the check expects.
func (e Expect) ExitCode() int {
	if e.Exit == nil {
		return 0
	}
	return *e.Exit
}

// OutputPattern is the compiled Output; nil when there is none. Validate
// has compiled it once already, so it does not fail on a valid exam.
func (e Expect) OutputPattern() *regexp.Regexp {
	if e.Output == "" {
		return nil
	}
	re, err := regexp.Compile(e.Output)
	if err != nil {
		return nil
	}
	return re
}

// Grading is how an exam is scored.
type Grading struct {
	// OnSubmit grades the lab before it is archived, on submit and at the
	// deadline. Unset means true when any task has checks.
	OnSubmit *bool `yaml:"on_submit,omitempty" json:"on_submit,omitempty"`
	// CandidateChecks is how many times per task a candidate may run
	// "check my work"; 0 turns it off.
	CandidateChecks int `yaml:"candidate_checks,omitempty" json:"candidate_checks"`
	// PassMark is the score that passes; 0 means none is set.
	PassMark int `yaml:"pass_mark,omitempty" json:"pass_mark,omitempty"`
}

// HasChecks reports whether any task of the exam has checks.
func (e *Exam) HasChecks() bool {
	for _, t := range e.Tasks {
		if len(t.Checks) > 0 {
			return true
		}
	}
	return false
}

// GradesOnSubmit reports whether a submitted lab is graded before it is
// archived.
func (e *Exam) GradesOnSubmit() bool {
	if e.Grading.OnSubmit != nil {
		return *e.Grading.OnSubmit && e.HasChecks()
	}
	return e.HasChecks()
}

// MaxScore is the sum of the tasks' points.
func (e *Exam) MaxScore() int {
	total := 0
	for _, t := range e.Tasks {
		total += t.Points
	}
	return total
}

// Fingerprint identifies this exact definition of the exam: the version
// it declares, else a digest of its content.
func (e *Exam) Fingerprint() string {
	if e.Version != "" {
		return e.Version
	}
	b, _ := json.Marshal(struct {
		*Exam
		Checks [][]Check `json:"checks"`
		Right  []string  `json:"correct"`
	}{e, taskChecks(e), taskCorrect(e)})
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:6])
}

func taskChecks(e *Exam) [][]Check {
	out := make([][]Check, len(e.Tasks))
	for i, t := range e.Tasks {
		out[i] = t.Checks
	}
	return out
}

func taskCorrect(e *Exam) []string {
	out := make([]string, len(e.Tasks))
	for i, t := range e.Tasks {
		out[i] = t.Correct
	}
	return out
}

func (e *Exam) applyCheckDefaults() {
	for i := range e.Tasks {
		t := &e.Tasks[i]
		sum := 0
		for j := range t.Checks {
			if t.Checks[j].Timeout.Duration == 0 && !t.Checks[j].timeoutZero {
				t.Checks[j].Timeout.Duration = DefaultCheckTimeout
			}
			sum += t.Checks[j].Points
		}
		if t.Points == 0 && len(t.Checks) > 0 {
			t.Points = sum
		}
	}
}

// validateGrading checks every task's checks and correct answer, and the
// grading block.
func (e *Exam) validateGrading(nodes map[string]bool) error {
	for i, t := range e.Tasks {
		f := fmt.Sprintf("tasks[%d]", i)
		if t.Points < 0 {
			return invalid(f+".points", "must not be negative, got %d", t.Points)
		}
		if t.Correct != "" {
			if t.Kind != KindChoice {
				return invalid(f+".correct", "only kind %q takes a correct answer", KindChoice)
			}
			found := false
			for _, o := range t.Options {
				found = found || o == t.Correct
			}
			if !found {
				return invalid(f+".correct", "%q is not one of the task's options", t.Correct)
			}
		}
		names := map[string]bool{}
		sum := 0
		for j, c := range t.Checks {
			fc := fmt.Sprintf("%s.checks[%d]", f, j)
			if strings.TrimSpace(c.Name) == "" {
				return invalid(fc+".name", "is required")
			}
			if names[c.Name] {
				return invalid(fc+".name", "the task already has a check named %q", c.Name)
			}
			names[c.Name] = true
			if !nodes[c.Node] {
				return invalid(fc+".node", "unknown node %q", c.Node)
			}
			if strings.TrimSpace(c.Run) == "" {
				return invalid(fc+".run", "is required")
			}
			if c.Expect.Exit != nil && (*c.Expect.Exit < 0 || *c.Expect.Exit > 255) {
				return invalid(fc+".expect.exit", "must be between 0 and 255, got %d", *c.Expect.Exit)
			}
			if c.Expect.Output != "" {
				if _, err := regexp.Compile(c.Expect.Output); err != nil {
					return invalid(fc+".expect.output", "is not a valid regular expression: %v", err)
				}
			}
			if c.Points < 0 {
				return invalid(fc+".points", "must not be negative, got %d", c.Points)
			}
			if err := c.Timeout.check(fc + ".timeout"); err != nil {
				return err
			}
			if d := c.Timeout.Duration; d <= 0 || d > MaxCheckTimeout {
				return invalid(fc+".timeout", "must be more than 0 and at most %s, got %s", MaxCheckTimeout, d)
			}
			sum += c.Points
		}
		if len(t.Checks) > 0 && sum != t.Points {
			return invalid(f+".points", "are %d but the task's checks award %d together", t.Points, sum)
		}
	}
	if c := e.Grading.CandidateChecks; c < 0 || c > MaxCandidateChecks {
		return invalid("grading.candidate_checks", "must be between 0 and %d, got %d", MaxCandidateChecks, c)
	}
	if p := e.Grading.PassMark; p < 0 || p > e.MaxScore() {
		return invalid("grading.pass_mark", "must be between 0 and the exam's %d points, got %d", e.MaxScore(), p)
	}
	return nil
}
