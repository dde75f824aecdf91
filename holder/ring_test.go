package holder

import (
	"bytes"
	"strings"
	"testing"
)

func TestRing(t *testing.T) {
	cases := []struct {
		name   string
		size   int
		writes []string
		want   string
	}{
		{name: "empty", size: 8, want: ""},
		{name: "under capacity", size: 8, writes: []string{"abc", "de"}, want: "abcde"},
		{name: "exactly full", size: 8, writes: []string{"abcd", "efgh"}, want: "abcdefgh"},
		{name: "wraps and keeps the newest", size: 8, writes: []string{"abcdef", "ghijk"}, want: "defghijk"},
		{name: "one write larger than the ring", size: 4, writes: []string{"ab", "cdefghij"}, want: "ghij"},
		{name: "many small writes", size: 5, writes: strings.Split("the quick brown fox", ""), want: "n fox"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRing(tc.size)
			var all bytes.Buffer
			for _, w := range tc.writes {
				r.Write([]byte(w))
				all.WriteString(w)
			}
			if got := string(r.Bytes()); got != tc.want {
				t.Errorf("Bytes() = %q, want %q", got, tc.want)
			}
			if r.Len() != len(tc.want) {
				t.Errorf("Len() = %d, want %d", r.Len(), len(tc.want))
			}
			if !strings.HasSuffix(all.String(), string(r.Bytes())) {
				t.Errorf("replay %q is not the tail of the output %q", r.Bytes(), all.String())
			}
		})
	}
}
