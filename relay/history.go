package relay

import (
	"strings"
	"unicode/utf8"
)

// maxLineBytes bounds one history line; the rest of a longer line is
// dropped (history is for reading, the recording keeps everything).
const maxLineBytes = 4096

// lineTracker turns the keystrokes a candidate sends into the command lines
// they entered. It follows the editing a reader would expect — backspace,
// Ctrl-U, Ctrl-W, Ctrl-C — and skips escape sequences (arrow keys, bracketed
// paste markers). It cannot see what the shell's own line editor does with
// arrow-key history or tab completion, so a line is what was typed, not
// necessarily what ran; the recording has the whole truth.
type lineTracker struct {
	line []byte
	esc  escState
}

type escState int

const (
	escNone   escState = iota
	escStart           // after ESC
	escCSI             // after ESC [
	escSS3             // after ESC O
	escString          // inside ESC ] … (OSC) until BEL or ST
)

// Feed consumes typed bytes and returns the lines completed by Enter.
func (t *lineTracker) Feed(p []byte) []string {
	var done []string
	for _, b := range p {
		switch t.esc {
		case escStart:
			switch b {
			case '[':
				t.esc = escCSI
			case 'O':
				t.esc = escSS3
			case ']', 'P', '_', '^':
				t.esc = escString
			default:
				t.esc = escNone // ESC x: Alt-x, nothing to keep
			}
			continue
		case escCSI:
			if b >= 0x40 && b <= 0x7e {
				t.esc = escNone
			}
			continue
		case escSS3:
			t.esc = escNone
			continue
		case escString:
			if b == 0x07 || b == '\\' {
				t.esc = escNone
			}
			continue
		}
		switch {
		case b == 0x1b:
			t.esc = escStart
		case b == '\r' || b == '\n':
			if s := strings.TrimSpace(string(t.line)); s != "" {
				done = append(done, strings.ToValidUTF8(s, "\uFFFD"))
			}
			t.line = t.line[:0]
		case b == 0x7f || b == 0x08: // backspace: one character
			if len(t.line) > 0 {
				_, n := utf8.DecodeLastRune(t.line)
				t.line = t.line[:len(t.line)-n]
			}
		case b == 0x15 || b == 0x03: // Ctrl-U kills the line; Ctrl-C abandons it
			t.line = t.line[:0]
		case b == 0x17: // Ctrl-W: the word before the cursor
			s := strings.TrimRight(string(t.line), " ")
			if i := strings.LastIndexByte(s, ' '); i >= 0 {
				t.line = t.line[:i+1]
			} else {
				t.line = t.line[:0]
			}
		case b < 0x20:
			// Other control keys (Tab, Ctrl-D, Ctrl-L…) do not edit the
			// line as far as can be told from here.
		default:
			t.line = appendCapped(t.line, b)
		}
	}
	return done
}

func appendCapped(line []byte, b byte) []byte {
	if len(line) >= maxLineBytes {
		return line
	}
	return append(line, b)
}
