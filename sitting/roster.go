package sitting

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Limits on a roster import.
const (
	MaxRosterBytes = 10 << 20
	MaxRosterRows  = 20000
	MaxEmail       = 254
	MaxName        = 200
	MaxExternalID  = 100
)

// ErrRosterTooLarge: the file is over MaxRosterBytes or MaxRosterRows.
var ErrRosterTooLarge = errors.New("roster too large")

// Row is one candidate read from a roster file.
type Row struct {
	Line       int    `json:"line"`
	Email      string `json:"email"`
	Name       string `json:"name"`
	ExternalID string `json:"external_id,omitempty"`
}

// RowError is what is wrong with one row, by line number (the header is
// line 1).
type RowError struct {
	Line    int    `json:"line"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func (e RowError) String() string {
	if e.Field == "" {
		return fmt.Sprintf("line %d: %s", e.Line, e.Message)
	}
	return fmt.Sprintf("line %d: %s: %s", e.Line, e.Field, e.Message)
}

// Roster is a parsed roster file: the rows that are good and an error for
// every row that is not. An import takes the rows only when Errors is
// empty, so a bad row never half-imports a file.
type Roster struct {
	Rows   []Row      `json:"rows"`
	Errors []RowError `json:"errors"`
}

// columns a roster file may have; email and name are required.
var columns = map[string]bool{"email": true, "name": true, "external_id": true}

// ParseRoster reads a CSV roster: a header row naming the columns (email,
// name, and optionally external_id, in any order), then one candidate per
// row. A byte-order mark and CRLF line ends are fine. taken holds the
// emails already on the roster, which count as duplicates. Problems with
// the file as a whole (not UTF-8, too large, no usable header) are
// returned as the error; problems with rows are collected in Errors.
func ParseRoster(data []byte, taken map[string]bool) (*Roster, error) {
	if len(data) > MaxRosterBytes {
		return nil, fmt.Errorf("%w: the file is over %d MiB", ErrRosterTooLarge, MaxRosterBytes>>20)
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: the file is not UTF-8 text; save it as CSV UTF-8", ErrInvalid)
	}
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = -1 // checked per row, so one short row is one row error
	r.TrimLeadingSpace = true
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: the file is empty; the first line must name the columns: email,name", ErrInvalid)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: line 1: %v", ErrInvalid, csvReason(err))
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		if !columns[h] {
			return nil, fmt.Errorf("%w: line 1: unknown column %q; the columns are email, name and optionally external_id", ErrInvalid, h)
		}
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("%w: line 1: column %q appears twice", ErrInvalid, h)
		}
		col[h] = i
	}
	for _, need := range []string{"email", "name"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("%w: line 1: the header has no %q column", ErrInvalid, need)
		}
	}
	out := &Roster{Rows: []Row{}, Errors: []RowError{}}
	seen := map[string]int{}
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		line, _ := r.FieldPos(0)
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				line = pe.StartLine
			}
			out.Errors = append(out.Errors, RowError{Line: line, Message: csvReason(err)})
			if errors.As(err, &pe) && pe.Err == csv.ErrQuote {
				// An unclosed quote swallows the rest of the file.
				break
			}
			continue
		}
		if len(out.Rows)+len(out.Errors) >= MaxRosterRows {
			return nil, fmt.Errorf("%w: more than %d rows; split the file", ErrRosterTooLarge, MaxRosterRows)
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue // a blank line
		}
		if len(rec) != len(header) {
			out.Errors = append(out.Errors, RowError{Line: line, Message: fmt.Sprintf("%d fields, the header has %d", len(rec), len(header))})
			continue
		}
		get := func(name string) string {
			if i, ok := col[name]; ok {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		row := Row{Line: line, Name: get("name"), ExternalID: get("external_id")}
		email, err := NormalizeEmail(get("email"))
		switch {
		case err != nil:
			out.Errors = append(out.Errors, RowError{Line: line, Field: "email", Message: fmt.Sprintf("%q is not a valid email address", clip(get("email")))})
			continue
		case taken[email]:
			out.Errors = append(out.Errors, RowError{Line: line, Field: "email", Message: email + " is already on the roster"})
			continue
		case seen[email] != 0:
			out.Errors = append(out.Errors, RowError{Line: line, Field: "email", Message: fmt.Sprintf("%s is also on line %d", email, seen[email])})
			continue
		case row.Name == "":
			out.Errors = append(out.Errors, RowError{Line: line, Field: "name", Message: "is empty"})
			continue
		case utf8.RuneCountInString(row.Name) > MaxName:
			out.Errors = append(out.Errors, RowError{Line: line, Field: "name", Message: fmt.Sprintf("is longer than %d characters", MaxName)})
			continue
		case utf8.RuneCountInString(row.ExternalID) > MaxExternalID:
			out.Errors = append(out.Errors, RowError{Line: line, Field: "external_id", Message: fmt.Sprintf("is longer than %d characters", MaxExternalID)})
			continue
		case strings.ContainsFunc(row.Name+row.ExternalID, isControl):
			out.Errors = append(out.Errors, RowError{Line: line, Message: "contains control characters"})
			continue
		}
		row.Email = email
		seen[email] = line
		out.Rows = append(out.Rows, row)
	}
	return out, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// clip shortens a value quoted back in an error.
func clip(s string) string {
	if utf8.RuneCountInString(s) <= 60 {
		return s
	}
	return string([]rune(s)[:60]) + "…"
}

// csvReason is a parse error without the reader's own line prefix.
func csvReason(err error) string {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
