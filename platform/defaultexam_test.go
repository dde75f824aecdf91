package platform_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/testlab"
)

// serviceTries bounds how often t4's check tries phoenix's listener.
const serviceTries = 20

// checkExamTasks checks on a fresh lab of the shipped exam that its tasks
// describe the lab a candidate gets: what reaches what at the start, the
// output t5 quotes, the fault t6 asks about, and that the answers of t3,
// t6 and t4 work. It changes the lab the way a candidate would.
func checkExamTasks(t *testing.T, st *testlab.Stack, ex *exam.Exam, id string) {
	t.Helper()
	ctx := context.Background()
	run := func(node string, cmd ...string) (string, int) {
		t.Helper()
		out, code, err := lab.Output(ctx, st.Runtime, id, node, cmd...)
		if err != nil {
			t.Fatalf("%s: %s: %v", node, strings.Join(cmd, " "), err)
		}
		return out, code
	}
	ping := func(from, to string) (string, int) {
		t.Helper()
		return run(from, "ping", "-c1", "-W2", to)
	}

	// At the start, the healthy branches reach the data centre (t2, t4)
	// but not each other (t3).
	for _, b := range []string{"tokyo", "osaka"} {
		if out, code := ping(b, "phoenix"); code != 0 {
			t.Errorf("%s cannot ping phoenix at the start:\n%s", b, out)
		}
	}
	if out, code := ping("tokyo", "osaka"); code == 0 {
		t.Errorf("tokyo reaches osaka before t3's routes:\n%s", out)
	}

	// t5 quotes what tokyo's ping out of the lab prints. The address is
	// one for documentation: nothing leaves the lab anyway.
	out, _ := ping("tokyo", "192.0.2.80")
	t5, _ := ex.Task("t5-diagnosis")
	var from string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "From ") {
			from = strings.TrimSpace(l)
		}
	}
	if from == "" || !strings.Contains(t5.Prompt, from) {
		t.Errorf("t5 quotes a line tokyo's ping does not print; it prints:\n%s", out)
	}

	// t6: kyoto's setup, run with kyoto's own NET_ADMIN, left its default
	// route pointing at a router that is gone.
	if out, code := ping("kyoto", "phoenix"); code == 0 {
		t.Errorf("kyoto reaches phoenix despite t6's fault:\n%s", out)
	}
	if out, _ := run("kyoto", "ip", "route", "show", "default"); !strings.Contains(out, "via 192.168.30.254") {
		t.Errorf("kyoto's default route = %q, want the planted one via 192.168.30.254", out)
	}

	// t3's answer: a route on each of g1 and g2, across the core.
	for _, r := range [][]string{
		{"g1", "ip", "route", "add", "192.168.20.0/24", "via", "10.0.0.2"},
		{"g2", "ip", "route", "add", "192.168.10.0/24", "via", "10.0.0.1"},
	} {
		if out, code := run(r[0], r[1:]...); code != 0 {
			t.Errorf("%s: %s: exit %d\n%s", r[0], strings.Join(r[1:], " "), code, out)
		}
	}
	if out, code := ping("tokyo", "osaka"); code != 0 {
		t.Errorf("tokyo cannot ping osaka with t3's routes in place:\n%s", out)
	}

	// t6's fix.
	if out, code := run("kyoto", "ip", "route", "replace", "default", "via", "192.168.30.1"); code != 0 {
		t.Errorf("kyoto cannot fix its own default route: exit %d\n%s", code, out)
	}
	if out, code := ping("kyoto", "phoenix"); code != 0 {
		t.Errorf("kyoto cannot ping phoenix after t6's fix:\n%s", out)
	}

	// t4: a service on phoenix, fetched from tokyo by name.
	if out, code := run("phoenix", "sh", "-c", `(while :; do printf 'hello from phoenix\n' | nc -l -p 8080 -q1; done) >/dev/null 2>&1 &`); code != 0 {
		t.Fatalf("start the listener on phoenix: exit %d\n%s", code, out)
	}
	got := ""
	for range serviceTries {
		if got, _ = run("tokyo", "nc", "-w2", "phoenix", "8080"); strings.Contains(got, "hello from phoenix") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(got, "hello from phoenix") {
		t.Errorf("tokyo fetched %q from phoenix:8080", got)
	}
}
