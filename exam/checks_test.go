package exam

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// graded is a small exam with every kind of graded task: a text task left
// for manual marking, a choice task with its correct option, and a task
// judged by two checks in the lab.
const graded = `
id: graded
title: Graded
duration: 30m
tasks:
  - id: t1
    title: Explain
    kind: text
    prompt: Explain.
    points: 5
  - id: t2
    title: Pick
    kind: choice
    prompt: Pick one.
    options: [left, right]
    correct: right
    points: 5
  - id: t3
    title: Route
    kind: command
    prompt: Route tokyo through g1.
    points: 20
    checks:
      - name: forwarding on g1
        node: g1
        run: sysctl -n net.ipv4.ip_forward
        expect: {exit: 0, output: '^1$'}
        points: 5
        timeout: 5s
      - name: tokyo reaches g1
        node: tokyo
        run: ping -c1 -W2 g1
        points: 15
        hidden: true
grading:
  candidate_checks: 3
  pass_mark: 20
topology:
  image: examlab/node:bookworm
  defaults:
    limits: {memory_mb: 64, cpus: 0.25, pids: 128}
  nodes:
    - {name: tokyo, role: branch}
    - {name: g1, role: gateway}
`

func parseGraded(t *testing.T, edit func(string) string) (*Exam, error) {
	t.Helper()
	src := graded
	if edit != nil {
		src = edit(graded)
		if src == graded {
			t.Fatal("edit did not change the exam; fix the test")
		}
	}
	return Parse([]byte(src))
}

func replace(old, new string) func(string) string {
	return func(s string) string { return strings.Replace(s, old, new, 1) }
}

func TestGradedExamParses(t *testing.T) {
	e, err := parseGraded(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := e.Tasks[2].Checks
	if len(c) != 2 || c[0].Timeout.Duration != 5*time.Second || c[1].Timeout.Duration != DefaultCheckTimeout {
		t.Errorf("checks = %+v, want 5s and the default %s", c, DefaultCheckTimeout)
	}
	if c[1].Expect.ExitCode() != 0 || c[1].Expect.OutputPattern() != nil {
		t.Errorf("a check without expect wants exit %d and pattern %v, want exit 0 and none", c[1].Expect.ExitCode(), c[1].Expect.OutputPattern())
	}
	if re := c[0].Expect.OutputPattern(); re == nil || !re.MatchString("1") || re.MatchString("0") {
		t.Errorf("output pattern of %q = %v", c[0].Expect.Output, re)
	}
	if !c[1].Hidden || c[0].Hidden {
		t.Error("hidden flags not read")
	}
	if e.MaxScore() != 30 || !e.HasChecks() || !e.GradesOnSubmit() {
		t.Errorf("max %d, checks %v, on submit %v; want 30, true, true", e.MaxScore(), e.HasChecks(), e.GradesOnSubmit())
	}
	if e.Tasks[1].Correct != "right" || e.Grading.CandidateChecks != 3 || e.Grading.PassMark != 20 {
		t.Errorf("correct %q, grading %+v", e.Tasks[1].Correct, e.Grading)
	}
}

func TestInvalidChecksNameTheField(t *testing.T) {
	tests := []struct {
		name      string
		edit      func(string) string
		wantField string
		// wantMsg, when set, must appear in the error.
		wantMsg string
	}{
		{"invalid regexp", replace(`output: '^1$'`, `output: '^(1$'`), "tasks[2].checks[0].expect.output", "regular expression"},
		{"invalid regexp in the second check", replace("        hidden: true", "        hidden: true\n        expect: {output: '[a-'}"), "tasks[2].checks[1].expect.output", ""},
		{"unknown node", replace("node: tokyo", "node: nagoya"), "tasks[2].checks[1].node", `"nagoya"`},
		{"no node", replace("        node: tokyo\n", ""), "tasks[2].checks[1].node", ""},
		{"points do not add up", replace("points: 15", "points: 10"), "tasks[2].points", "are 20 but the task's checks award 15 together"},
		{"task points below the checks'", replace("points: 20\n    checks:", "points: 25\n    checks:"), "tasks[2].points", "are 25 but the task's checks award 20 together"},
		{"negative check points", replace("points: 15", "points: -15"), "tasks[2].checks[1].points", ""},
		{"zero timeout", replace("timeout: 5s", "timeout: 0s"), "tasks[2].checks[0].timeout", "more than 0"},
		{"negative timeout", replace("timeout: 5s", "timeout: -5s"), "tasks[2].checks[0].timeout", "more than 0"},
		{"timeout over two minutes", replace("timeout: 5s", "timeout: 2m1s"), "tasks[2].checks[0].timeout", "at most 2m0s"},
		{"timeout no duration", replace("timeout: 5s", "timeout: soon"), "tasks[2].checks[0].timeout", `"soon"`},
		{"exit below 0", replace("exit: 0,", "exit: -1,"), "tasks[2].checks[0].expect.exit", "between 0 and 255"},
		{"exit above 255", replace("exit: 0,", "exit: 256,"), "tasks[2].checks[0].expect.exit", "got 256"},
		{"duplicate check name", replace("name: tokyo reaches g1", "name: forwarding on g1"), "tasks[2].checks[1].name", `"forwarding on g1"`},
		{"no check name", replace("name: tokyo reaches g1", "name: '  '"), "tasks[2].checks[1].name", "required"},
		{"empty run", replace("run: ping -c1 -W2 g1", "run: ' '"), "tasks[2].checks[1].run", "required"},
		{"no run", replace("        run: ping -c1 -W2 g1\n", ""), "tasks[2].checks[1].run", "required"},
		{"correct on a text task", replace("    points: 5\n  - id: t2", "    points: 5\n    correct: yes\n  - id: t2"), "tasks[0].correct", `"choice"`},
		{"correct on a command task", replace("    points: 20\n    checks:", "    points: 20\n    correct: x\n    checks:"), "tasks[2].correct", ""},
		{"correct not an option", replace("correct: right", "correct: up"), "tasks[1].correct", `"up" is not one of`},
		{"correct differs in case", replace("correct: right", "correct: Right"), "tasks[1].correct", ""},
		{"negative task points", replace("    points: 5\n  - id: t2", "    points: -5\n  - id: t2"), "tasks[0].points", ""},
		{"candidate checks negative", replace("candidate_checks: 3", "candidate_checks: -1"), "grading.candidate_checks", ""},
		{"candidate checks too many", replace("candidate_checks: 3", "candidate_checks: 21"), "grading.candidate_checks", "between 0 and 20"},
		{"pass mark over the maximum", replace("pass_mark: 20", "pass_mark: 31"), "grading.pass_mark", "the exam's 30 points, got 31"},
		{"pass mark negative", replace("pass_mark: 20", "pass_mark: -1"), "grading.pass_mark", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseGraded(t, tc.edit)
			wantInvalid(t, err, tc.wantField)
			if err != nil && tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
		})
	}
}

// TestUnknownCheckFieldsAreRefused: exam files are decoded strictly, checks
// and their expectations included, so a misspelt key is an error and not
// a check that silently expects nothing.
func TestUnknownCheckFieldsAreRefused(t *testing.T) {
	for _, tc := range []struct{ name, old, new, field string }{
		{"check", "        hidden: true", "        hiden: true", "hiden"},
		{"expect", "{exit: 0, output: '^1$'}", "{exit: 0, ouput: '^1$'}", "ouput"},
		{"grading", "candidate_checks: 3", "candidate_check: 3", "candidate_check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseGraded(t, replace(tc.old, tc.new))
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v: want one quoting %q", err, tc.field)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestCheckDefaults(t *testing.T) {
	t.Run("timeout defaults to 10s", func(t *testing.T) {
		e, err := parseGraded(t, replace("        timeout: 5s\n", ""))
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range e.Tasks[2].Checks {
			if c.Timeout.Duration != 10*time.Second {
				t.Errorf("checks[%d] timeout = %s, want 10s", i, c.Timeout.Duration)
			}
		}
	})
	t.Run("task points default to the checks' sum", func(t *testing.T) {
		e, err := parseGraded(t, replace("points: 20\n    checks:", "checks:"))
		if err != nil {
			t.Fatal(err)
		}
		if e.Tasks[2].Points != 20 || e.MaxScore() != 30 {
			t.Errorf("task points %d, max %d; want 20 and 30", e.Tasks[2].Points, e.MaxScore())
		}
	})
	t.Run("the longest timeout is allowed", func(t *testing.T) {
		e, err := parseGraded(t, replace("timeout: 5s", "timeout: 2m"))
		if err != nil {
			t.Fatal(err)
		}
		if d := e.Tasks[2].Checks[0].Timeout.Duration; d != MaxCheckTimeout {
			t.Errorf("timeout = %s, want %s", d, MaxCheckTimeout)
		}
	})
	t.Run("on_submit false turns grading on submit off", func(t *testing.T) {
		e, err := parseGraded(t, replace("grading:\n", "grading:\n  on_submit: false\n"))
		if err != nil {
			t.Fatal(err)
		}
		if e.GradesOnSubmit() {
			t.Error("grades on submit though on_submit is false")
		}
	})
	t.Run("no checks, nothing to grade on submit", func(t *testing.T) {
		e := loadTestdata(t, "flat.yaml")
		if e.HasChecks() || e.GradesOnSubmit() {
			t.Errorf("an exam without checks: has checks %v, grades on submit %v", e.HasChecks(), e.GradesOnSubmit())
		}
	})
}

func TestFingerprint(t *testing.T) {
	fp := func(t *testing.T, edit func(string) string) string {
		t.Helper()
		e, err := parseGraded(t, edit)
		if err != nil {
			t.Fatal(err)
		}
		return e.Fingerprint()
	}
	base := fp(t, nil)
	if !strings.HasPrefix(base, "sha256:") || base != fp(t, nil) {
		t.Fatalf("fingerprint %q is not a stable digest", base)
	}
	// Reformatting the file changes nothing.
	if got := fp(t, replace("{exit: 0, output: '^1$'}", "\n          exit: 0\n          output: '^1$'")); got != base {
		t.Errorf("the same exam written another way has fingerprint %s, want %s", got, base)
	}
	for _, tc := range []struct{ name, old, new string }{
		{"check command", "run: ping -c1 -W2 g1", "run: ping -c2 -W2 g1"},
		{"expected output", `output: '^1$'`, `output: '^0$'`},
		{"check node", "node: tokyo", "node: g1"},
		{"check timeout", "timeout: 5s", "timeout: 6s"},
		{"hidden", "        hidden: true\n", ""},
		{"points moved between checks", "points: 15\n", "points: 10\n"},
		{"correct option", "correct: right", "correct: left"},
		{"pass mark", "pass_mark: 20", "pass_mark: 10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edit := replace(tc.old, tc.new)
			if tc.name == "points moved between checks" {
				edit = func(s string) string {
					return strings.Replace(strings.Replace(s, "points: 15\n", "points: 10\n", 1), "points: 5\n        timeout", "points: 10\n        timeout", 1)
				}
			}
			if got := fp(t, edit); got == base {
				t.Errorf("fingerprint unchanged (%s) when the %s changes", got, tc.name)
			}
		})
	}
	t.Run("a declared version is the fingerprint", func(t *testing.T) {
		if got := fp(t, replace("duration: 30m", "duration: 30m\nversion: 2026-12")); got != "2026-12" {
			t.Errorf("fingerprint = %q, want the version 2026-12", got)
		}
	})
}

// TestChecksNeverInTaskJSON: tasks are sent to candidates as JSON; what
// judges them (the checks, the correct option) must not travel with them.
func TestChecksNeverInTaskJSON(t *testing.T) {
	e, err := parseGraded(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{e.Tasks, e.Tasks[1], e.Tasks[2], e} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, secret := range []string{`"checks"`, `"correct"`, "sysctl", "ping -c1", "forwarding on g1", `^1$`, `"right"`} {
			if strings.Contains(s, secret) && !(secret == `"right"` && strings.Contains(s, `"options"`)) {
				t.Errorf("JSON of %T holds %q: %s", v, secret, s)
			}
		}
	}
	// The option list itself names the right answer among the others, and
	// only there.
	b, _ := json.Marshal(e.Tasks[1])
	if strings.Count(string(b), `"right"`) != 1 {
		t.Errorf("choice task JSON names the right option more than once: %s", b)
	}
}

// TestDefaultExamGrading: the shipped exam grades what shows in its lab
// (t3, t4, t6) with checks, scores t5 by its correct option, and leaves t1
// and t2 to an examiner. The grading tests run these checks in real labs.
func TestDefaultExamGrading(t *testing.T) {
	e := Default()
	if !e.GradesOnSubmit() || e.Grading.CandidateChecks != 3 || e.Grading.PassMark <= 0 || e.Grading.PassMark > e.MaxScore() {
		t.Errorf("grading = %+v, want on submit, 3 candidate checks and a pass mark within %d", e.Grading, e.MaxScore())
	}
	graded := map[string]bool{"t3-routing": true, "t4-service": true, "t6-troubleshooting": true}
	for _, task := range e.Tasks {
		if graded[task.ID] != (len(task.Checks) > 0) {
			t.Errorf("%s has %d checks; want checks on exactly %v", task.ID, len(task.Checks), graded)
		}
		hidden, shown := 0, 0
		for _, c := range task.Checks {
			if c.Hidden {
				hidden++
			} else {
				shown++
			}
			// Checks run with the grader's applets only; a name would be
			// resolved through the node's own /etc/hosts, which its
			// candidate may edit.
			for _, n := range e.NodeNames() {
				if strings.Contains(c.Run, " "+n+" ") || strings.HasSuffix(c.Run, " "+n) {
					t.Errorf("%s: check %q names node %s in its command; use its address", task.ID, c.Name, n)
				}
			}
		}
		if len(task.Checks) > 0 && (hidden == 0 || shown == 0) {
			t.Errorf("%s: %d hidden and %d shown checks, want some of each", task.ID, hidden, shown)
		}
	}
	t5, _ := e.Task("t5-diagnosis")
	if !strings.Contains(t5.Correct, "no way out") {
		t.Errorf("t5's correct option = %q, want the one about the lab having no way out", t5.Correct)
	}
	if t5.Options[0] == t5.Correct {
		t.Error("t5 lists its answer first")
	}
	t4, _ := e.Task("t4-service")
	for _, want := range []string{"8080", `"hello from phoenix"`, "keeps running"} {
		if !strings.Contains(t4.Prompt, want) {
			t.Errorf("t4's prompt does not say %s, which its checks expect", want)
		}
	}
}
