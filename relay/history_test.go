package relay

import (
	"reflect"
	"testing"
)

func TestLineTracker(t *testing.T) {
	cases := []struct {
		name  string
		input []string // fed one after another, as separate frames
		want  []string
	}{
		{name: "one command", input: []string{"ls -l\r"}, want: []string{"ls -l"}},
		{name: "typed key by key", input: []string{"e", "c", "h", "o", " ", "h", "i", "\r"}, want: []string{"echo hi"}},
		{name: "backspace edits", input: []string{"ecoh\x7f\x7fho x\r"}, want: []string{"echo x"}},
		{name: "backspace removes a whole character", input: []string{"echo é\x7fe\r"}, want: []string{"echo e"}},
		{name: "ctrl-u kills the line", input: []string{"rm -rf /\x15echo safe\r"}, want: []string{"echo safe"}},
		{name: "ctrl-c abandons the line", input: []string{"sleep 100\x03", "date\r"}, want: []string{"date"}},
		{name: "ctrl-w removes a word", input: []string{"ip route show\x17addr\r"}, want: []string{"ip route addr"}},
		{name: "arrow keys are skipped", input: []string{"\x1b[A\x1b[Bhostname\x1bOD\r"}, want: []string{"hostname"}},
		{name: "escape split across frames", input: []string{"ls\x1b", "[", "C -a\r"}, want: []string{"ls -a"}},
		{name: "bracketed paste of two lines", input: []string{"\x1b[200~uname -a\rid\x1b[201~\r"}, want: []string{"uname -a", "id"}},
		{name: "blank lines are not history", input: []string{"\r\r  \r\n"}, want: nil},
		{name: "crlf counts once", input: []string{"pwd\r\n"}, want: []string{"pwd"}},
		{name: "unfinished line stays pending", input: []string{"uptime"}, want: nil},
		{name: "osc string skipped", input: []string{"\x1b]0;title\x07whoami\r"}, want: []string{"whoami"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var lt lineTracker
			var got []string
			for _, in := range tc.input {
				got = append(got, lt.Feed([]byte(in))...)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("lines %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLineTrackerBoundsLongLines(t *testing.T) {
	var lt lineTracker
	long := make([]byte, 3*maxLineBytes)
	for i := range long {
		long[i] = 'x'
	}
	got := lt.Feed(append(long, '\r'))
	if len(got) != 1 || len(got[0]) != maxLineBytes {
		t.Fatalf("got %d lines, first of %d bytes; want one of %d", len(got), len(got[0]), maxLineBytes)
	}
}
