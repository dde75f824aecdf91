package docker

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"
)

func frame(stream byte, payload string) []byte {
	h := make([]byte, 8, 8+len(payload))
	h[0] = stream
	binary.BigEndian.PutUint32(h[4:], uint32(len(payload)))
	return append(h, payload...)
}

func TestDemuxReader(t *testing.T) {
	cases := []struct {
		name    string
		in      []byte
		want    string
		wantErr string
	}{
		{name: "empty", in: nil, want: ""},
		{name: "stdout and stderr merge in order",
			in:   bytes.Join([][]byte{frame(1, "a\n"), frame(2, "b\n"), frame(1, "c\n")}, nil),
			want: "a\nb\nc\n"},
		{name: "empty frame", in: append(frame(1, ""), frame(1, "x")...), want: "x"},
		{name: "large frame", in: frame(1, strings.Repeat("z", 70000)), want: strings.Repeat("z", 70000)},
		{name: "truncated payload", in: frame(1, "abcdef")[:10], want: "ab", wantErr: "unexpected EOF"},
		{name: "truncated header", in: append(frame(1, "ok"), 1, 0), want: "ok", wantErr: "truncated frame header"},
		{name: "engine error", in: append(frame(1, "ok"), frame(3, "boom")...), want: "ok", wantErr: "boom"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A one-byte reader makes every frame boundary land mid-read.
			got, err := io.ReadAll(newDemuxReader(&oneByteReader{r: bytes.NewReader(tc.in)}))
			if string(got) != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

type oneByteReader struct{ r io.Reader }

func (o *oneByteReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	return o.r.Read(b[:1])
}
