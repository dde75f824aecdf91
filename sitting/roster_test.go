package sitting

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestParseRosterGoodFile(t *testing.T) {
	file := "\xef\xbb\xbfName,Email,external_id\r\n" +
		"Ada Lovelace, Ada@Example.com ,A-1\r\n" +
		"\r\n" +
		"\"Hopper, Grace\",grace@example.com,\r\n"
	r, err := ParseRoster([]byte(file), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) != 0 {
		t.Fatalf("errors: %v", r.Errors)
	}
	want := []Row{
		{Line: 2, Email: "ada@example.com", Name: "Ada Lovelace", ExternalID: "A-1"},
		{Line: 4, Email: "grace@example.com", Name: "Hopper, Grace"},
	}
	if fmt.Sprint(r.Rows) != fmt.Sprint(want) {
		t.Fatalf("rows = %+v\nwant   %+v", r.Rows, want)
	}
}

func TestParseRosterRowErrors(t *testing.T) {
	file := strings.Join([]string{
		"email,name",
		"ada@example.com,Ada",                         // 2 good
		"not-an-email,Bob",                            // 3
		"ADA@example.com,Ada again",                   // 4 duplicate of 2
		"carol@example.com,",                          // 5 empty name
		"dan@example.com," + strings.Repeat("x", 201), // 6 too long
		"erin@example.com,Erin,extra",                 // 7 extra field
		"taken@example.com,Already",                   // 8 already on the roster
		"fay@example.com,Fay\x01",                     // 9 control character
		"gus@example.com,Gus",                         // 10 good
	}, "\n")
	r, err := ParseRoster([]byte(file), map[string]bool{"taken@example.com": true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range r.Errors {
		got = append(got, e.String())
	}
	want := []string{
		`line 3: email: "not-an-email" is not a valid email address`,
		`line 4: email: ada@example.com is also on line 2`,
		`line 5: name: is empty`,
		`line 6: name: is longer than 200 characters`,
		`line 7: 3 fields, the header has 2`,
		`line 8: email: taken@example.com is already on the roster`,
		`line 9: contains control characters`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(r.Rows) != 2 || r.Rows[0].Line != 2 || r.Rows[1].Line != 10 {
		t.Fatalf("rows = %+v", r.Rows)
	}
}

func TestParseRosterRefusesTheFile(t *testing.T) {
	var big bytes.Buffer
	big.WriteString("email,name\n")
	for i := 0; big.Len() <= MaxRosterBytes; i++ {
		fmt.Fprintf(&big, "candidate%07d@example.com,%s\n", i, strings.Repeat("n", 60))
	}
	var many bytes.Buffer
	many.WriteString("email,name\n")
	for i := range MaxRosterRows + 1 {
		fmt.Fprintf(&many, "c%d@example.com,C\n", i)
	}
	tests := []struct {
		name string
		file []byte
		want error
		says string
	}{
		{"empty", nil, ErrInvalid, "empty"},
		{"no header columns", []byte("ada@example.com,Ada\n"), ErrInvalid, "unknown column"},
		{"missing name column", []byte("email\nada@example.com\n"), ErrInvalid, `no "name" column`},
		{"column twice", []byte("email,name,email\n"), ErrInvalid, "twice"},
		{"not UTF-8", []byte("email,name\nada@example.com,Ad\xe9\n"), ErrInvalid, "UTF-8"},
		{"over 10 MiB", big.Bytes(), ErrRosterTooLarge, "MiB"},
		{"too many rows", many.Bytes(), ErrRosterTooLarge, "rows"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRoster(tc.file, nil)
			if !errors.Is(err, tc.want) || r != nil || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("ParseRoster = %v, %v; want %v saying %q", r, err, tc.want, tc.says)
			}
		})
	}
}

func TestParseRosterUnclosedQuote(t *testing.T) {
	r, err := ParseRoster([]byte("email,name\nada@example.com,\"Ada\nbob@example.com,Bob\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) != 1 || r.Errors[0].Line != 2 {
		t.Fatalf("errors = %v", r.Errors)
	}
}

func TestSittingValidateAndWindow(t *testing.T) {
	opens := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	good := Sitting{ID: "dec-morning", ExamID: "netops", Opens: opens, Closes: opens.Add(4 * time.Hour), Capacity: 8}
	tests := []struct {
		name string
		edit func(*Sitting)
		says string
	}{
		{"good", func(*Sitting) {}, ""},
		{"bad id", func(s *Sitting) { s.ID = "Dec Morning" }, "id"},
		{"no exam", func(s *Sitting) { s.ExamID = "" }, "exam_id"},
		{"closes first", func(s *Sitting) { s.Closes = s.Opens }, "closes"},
		{"no window", func(s *Sitting) { s.Opens = time.Time{} }, "opens"},
		{"negative capacity", func(s *Sitting) { s.Capacity = -1 }, "capacity"},
		{"long title", func(s *Sitting) { s.Title = strings.Repeat("t", 201) }, "title"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.edit(&s)
			err := s.Validate()
			if tc.says == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want one naming %s", err, tc.says)
			}
		})
	}
	for _, tc := range []struct {
		at   time.Time
		want error
	}{
		{opens.Add(-time.Second), ErrNotOpen},
		{opens, nil},
		{opens.Add(4*time.Hour - time.Second), nil},
		{opens.Add(4 * time.Hour), ErrClosed},
	} {
		if err := good.Admits(tc.at); !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
			t.Errorf("Admits(%v) = %v, want %v", tc.at, err, tc.want)
		}
	}
}
