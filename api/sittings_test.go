package api_test

// Sittings and rosters through the admin API, on the whole platform in
// process against a private redis-server (`make deps`). No lab is brought
// up: a session's state is moved through the store where a test needs a
// lab to be running.

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// uploadTimeout bounds one roster upload of several megabytes.
const uploadTimeout = time.Minute

// sittingStack runs the platform without its periodic sweeps: these tests
// bring up no lab and move session states themselves.
func sittingStack(t *testing.T) *testlab.Stack {
	t.Helper()
	return testlab.Start(t, testlab.Options{Platform: platform.Options{NoScheduler: true}})
}

// window is an RFC 3339 pair around now.
func window(from, to time.Duration) (string, string) {
	now := time.Now().UTC()
	return now.Add(from).Format(time.RFC3339), now.Add(to).Format(time.RFC3339)
}

type sittingOut struct {
	ID               string    `json:"id"`
	ExamID           string    `json:"exam_id"`
	Title            string    `json:"title"`
	Opens            time.Time `json:"opens"`
	Closes           time.Time `json:"closes"`
	Capacity         int       `json:"capacity"`
	OpenRegistration bool      `json:"open_registration"`
	State            string    `json:"state"`
	Roster           int       `json:"roster"`
	SignedIn         int       `json:"signed_in"`
	Running          int       `json:"running"`
	Ended            int       `json:"ended"`
}

type entryOut struct {
	ID            string `json:"id"`
	Email         string `json:"email"`
	Name          string `json:"name"`
	ExternalID    string `json:"external_id"`
	SessionID     string `json:"session_id"`
	SessionStatus string `json:"session_status"`
}

type sittingDetail struct {
	Sitting sittingOut         `json:"sitting"`
	Entries []entryOut         `json:"entries"`
	Audit   []store.AuditEntry `json:"audit"`
}

// newSitting creates a sitting open now for an hour.
func newSitting(t *testing.T, admin *testlab.Client, id string) {
	t.Helper()
	opens, closes := window(-time.Minute, time.Hour)
	code, err := admin.Do("POST", "/api/admin/sittings", map[string]any{"id": id, "title": "Sitting " + id, "opens": opens, "closes": closes, "capacity": 5}, nil)
	must(t, code, err, 201, "create sitting "+id)
}

func getSitting(t *testing.T, admin *testlab.Client, id string) sittingDetail {
	t.Helper()
	var d sittingDetail
	code, err := admin.Do("GET", "/api/admin/sittings/"+id, nil, &d)
	must(t, code, err, 200, "get sitting "+id)
	return d
}

// entryByEmail finds a roster entry in a sitting's detail.
func entryByEmail(t *testing.T, d sittingDetail, email string) entryOut {
	t.Helper()
	for _, e := range d.Entries {
		if e.Email == email {
			return e
		}
	}
	t.Fatalf("%s is not on the roster of %s: %+v", email, d.Sitting.ID, d.Entries)
	return entryOut{}
}

func auditActions(d sittingDetail) map[string]int {
	n := map[string]int{}
	for _, e := range d.Audit {
		if e.Actor == "admin" {
			n[e.Action]++
		}
	}
	return n
}

// send makes a raw request with the admin token (or token) and answers
// the status and the body.
func send(t *testing.T, st *testlab.Stack, method, path, token, contentType string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, st.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: uploadTimeout}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read answer: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// sendCut posts a body the server will not read whole. It stops reading
// at its limit, answers 413 and closes the connection; a client still
// sending may see the connection reset before it reads the answer, which
// sendCut reports as 0.
func sendCut(t *testing.T, st *testlab.Stack, path, token string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest("POST", st.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/csv")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: uploadTimeout}).Do(req)
	if err != nil {
		t.Logf("POST %s: %v", path, err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

type importOut struct {
	Error      string             `json:"error"`
	Preview    bool               `json:"preview"`
	Rows       []sitting.Row      `json:"rows"`
	Errors     []sitting.RowError `json:"errors"`
	Count      int                `json:"count"`
	ErrorCount int                `json:"error_count"`
	Imported   int                `json:"imported"`
	Roster     int                `json:"roster"`
}

// upload posts a roster file as the admin.
func upload(t *testing.T, st *testlab.Stack, id string, preview bool, file []byte) (int, importOut) {
	t.Helper()
	path := "/api/admin/sittings/" + id + "/roster"
	if preview {
		path += "?preview=1"
	}
	code, b := send(t, st, "POST", path, st.AdminToken, "text/csv", file)
	var out importOut
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("upload to %s: %d %q: %v", id, code, b, err)
	}
	return code, out
}

// exportCodes exports the sitting's roster and answers each email's code
// and link.
func exportCodes(t *testing.T, st *testlab.Stack, id string) (codes, links map[string]string) {
	t.Helper()
	code, b := send(t, st, "POST", "/api/admin/sittings/"+id+"/roster/export", st.AdminToken, "", nil)
	if code != 200 {
		t.Fatalf("export %s: %d %s", id, code, b)
	}
	recs, err := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(b, []byte("\ufeff")))).ReadAll()
	if err != nil {
		t.Fatalf("export %s is not CSV: %v\n%s", id, err, b)
	}
	if got := strings.Join(recs[0], ","); got != "email,name,external_id,code,link" {
		t.Fatalf("export header %q", got)
	}
	codes, links = map[string]string{}, map[string]string{}
	for _, r := range recs[1:] {
		codes[r[0]], links[r[0]] = r[3], r[4]
	}
	return codes, links
}

type signInOut struct {
	Error     string `json:"error"`
	SessionID string `json:"session_id"`
	Token     string `json:"token"`
}

// signIn signs in with an access code from a fresh client.
func signIn(t *testing.T, st *testlab.Stack, accessCode string) (int, signInOut) {
	t.Helper()
	var out signInOut
	code, err := st.Client().Do("POST", "/api/login", map[string]string{"code": accessCode}, &out)
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
	return code, out
}

// TestSittingsCreateListEdit: sittings are created, listed and edited, and
// every refusal is a 4xx naming the field, with nothing written.
func TestSittingsCreateListEdit(t *testing.T) {
	st := sittingStack(t)
	admin := st.Admin()
	opens, closes := window(-time.Minute, 2*time.Hour)
	var created struct {
		Sitting sittingOut `json:"sitting"`
	}
	code, err := admin.Do("POST", "/api/admin/sittings", map[string]any{
		"id": "spring-am", "title": "Spring, morning", "opens": opens, "closes": closes, "capacity": 40,
	}, &created)
	must(t, code, err, 201, "create")
	if c := created.Sitting; c.ExamID != st.Exam.ID || c.State != "open" || c.Capacity != 40 || c.OpenRegistration || c.Title != "Spring, morning" {
		t.Fatalf("created %+v", c)
	}
	later, evenLater := window(24*time.Hour, 26*time.Hour)
	code, err = admin.Do("POST", "/api/admin/sittings", map[string]any{"id": "spring-pm", "exam_id": st.Exam.ID, "opens": later, "closes": evenLater, "open_registration": true}, nil)
	must(t, code, err, 201, "create a later one")

	cases := []struct {
		name  string
		body  any
		want  int
		field string
	}{
		{"no id", map[string]any{"opens": opens, "closes": closes}, 400, "id"},
		{"id with capitals", map[string]any{"id": "Spring", "opens": opens, "closes": closes}, 400, "id"},
		{"id with a slash", map[string]any{"id": "a/b", "opens": opens, "closes": closes}, 400, "id"},
		{"id taken", map[string]any{"id": "spring-am", "opens": opens, "closes": closes}, 409, "already exists"},
		{"no window", map[string]any{"id": "x1"}, 400, "opens and closes"},
		{"opens not a time", map[string]any{"id": "x1", "opens": "tomorrow", "closes": closes}, 400, "opens"},
		{"closes without a zone", map[string]any{"id": "x1", "opens": opens, "closes": "2030-01-01 09:00"}, 400, "closes"},
		{"closes before opens", map[string]any{"id": "x1", "opens": closes, "closes": opens}, 400, "closes must be after opens"},
		{"window over a year", map[string]any{"id": "x1", "opens": opens, "closes": time.Now().AddDate(2, 0, 0).Format(time.RFC3339)}, 400, "window"},
		{"window already over", map[string]any{"id": "x1", "opens": "2020-01-01T09:00:00Z", "closes": "2020-01-01T12:00:00Z"}, 400, "closes"},
		{"negative capacity", map[string]any{"id": "x1", "opens": opens, "closes": closes, "capacity": -1}, 400, "capacity"},
		{"capacity as text", map[string]any{"id": "x1", "opens": opens, "closes": closes, "capacity": "ten"}, 400, "capacity"},
		{"unknown exam", map[string]any{"id": "x1", "exam_id": "chemistry", "opens": opens, "closes": closes}, 400, "exam_id"},
		{"title too long", map[string]any{"id": "x1", "opens": opens, "closes": closes, "title": strings.Repeat("t", 201)}, 400, "title"},
		{"title with a newline", map[string]any{"id": "x1", "opens": opens, "closes": closes, "title": "a\nb"}, 400, "title"},
		{"unknown field", map[string]any{"id": "x1", "opens": opens, "closes": closes, "admins": []string{"me"}}, 400, "admins"},
		{"not JSON", "id=x1", 400, "request body"},
	}
	for _, tc := range cases {
		t.Run("create: "+tc.name, func(t *testing.T) {
			var out struct {
				Error string `json:"error"`
			}
			code, err := admin.Do("POST", "/api/admin/sittings", tc.body, &out)
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.want || !strings.Contains(out.Error, tc.field) {
				t.Fatalf("%d %q, want %d naming %q", code, out.Error, tc.want, tc.field)
			}
		})
	}

	var list struct {
		Sittings []sittingOut `json:"sittings"`
	}
	code, err = admin.Do("GET", "/api/admin/sittings", nil, &list)
	must(t, code, err, 200, "list")
	got := map[string]sittingOut{}
	for _, s := range list.Sittings {
		got[s.ID] = s
	}
	if len(got) != 3 || got["spring-am"].State != "open" || got["spring-pm"].State != "upcoming" || !got["spring-pm"].OpenRegistration || got["practice"].ID == "" {
		t.Fatalf("list = %+v, want spring-am (open), spring-pm (upcoming) and practice", list.Sittings)
	}

	edits := []struct {
		name  string
		body  any
		want  int
		field string
	}{
		{"change the id", map[string]any{"id": "autumn"}, 400, "id"},
		{"change the exam", map[string]any{"exam_id": st.Exam.ID}, 400, "exam_id"},
		{"nothing", map[string]any{}, 400, "nothing to change"},
		{"closes before opens", map[string]any{"closes": "2000-01-01T00:00:00Z"}, 400, "closes"},
		{"capacity too large", map[string]any{"capacity": 10001}, 400, "capacity"},
		{"opens not a time", map[string]any{"opens": "soon"}, 400, "opens"},
	}
	for _, tc := range edits {
		t.Run("edit: "+tc.name, func(t *testing.T) {
			var out struct {
				Error string `json:"error"`
			}
			code, err := admin.Do("PATCH", "/api/admin/sittings/spring-am", tc.body, &out)
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.want || !strings.Contains(out.Error, tc.field) {
				t.Fatalf("%d %q, want %d naming %q", code, out.Error, tc.want, tc.field)
			}
		})
	}
	if d := getSitting(t, admin, "spring-am"); d.Sitting.Capacity != 40 || d.Sitting.Title != "Spring, morning" || auditActions(d)["sitting-edit"] != 0 {
		t.Fatalf("refused edits changed the sitting: %+v, audit %+v", d.Sitting, d.Audit)
	}

	newCloses := time.Now().UTC().Add(3 * time.Hour).Truncate(time.Second)
	var edited struct {
		Sitting sittingOut     `json:"sitting"`
		Changed map[string]any `json:"changed"`
	}
	code, err = admin.Do("PATCH", "/api/admin/sittings/spring-am", map[string]any{
		"title": "Spring, morning (room 2)", "capacity": 0, "closes": newCloses.Format(time.RFC3339), "open_registration": false,
	}, &edited)
	must(t, code, err, 200, "edit")
	if e := edited.Sitting; e.Title != "Spring, morning (room 2)" || e.Capacity != 0 || !e.Closes.Equal(newCloses) {
		t.Fatalf("edited %+v", e)
	}
	if _, ok := edited.Changed["open_registration"]; ok || len(edited.Changed) != 3 {
		t.Fatalf("changed = %v, want title, capacity and closes", edited.Changed)
	}
	code, err = admin.Do("PATCH", "/api/admin/sittings/autumn", map[string]any{"title": "x"}, nil)
	must(t, code, err, 404, "edit an unknown sitting")
	code, err = admin.Do("GET", "/api/admin/sittings/Bad..Id", nil, nil)
	must(t, code, err, 400, "get a malformed id")

	d := getSitting(t, admin, "spring-am")
	if a := auditActions(d); a["sitting-create"] != 1 || a["sitting-edit"] != 1 {
		t.Fatalf("audit of spring-am: %+v", d.Audit)
	}
}

// rosterFile builds a CSV roster of n candidates.
func rosterFile(header string, n int, lineEnd string) []byte {
	var b bytes.Buffer
	b.WriteString(header + lineEnd)
	for i := range n {
		fmt.Fprintf(&b, "cand%06d@example.com,Candidate %d%s", i, i, lineEnd)
	}
	return b.Bytes()
}

// TestRosterImport: a preview writes nothing; a good file imports whole; a
// file with any bad row, or one that is not a usable CSV at all, imports
// nothing and says why, row by row where it can.
func TestRosterImport(t *testing.T) {
	st := sittingStack(t)
	admin := st.Admin()
	newSitting(t, admin, "june")

	good := []byte("email,name,external_id\nada@example.com,Ada Lovelace,A-1\n\"bob@example.com\",\"Bob, Jr.\",\n")
	code, out := upload(t, st, "june", true, good)
	if code != 200 || !out.Preview || out.Count != 2 || out.ErrorCount != 0 || out.Rows[1].Name != "Bob, Jr." || out.Rows[0].ExternalID != "A-1" {
		t.Fatalf("preview of a good file: %d %+v", code, out)
	}
	if d := getSitting(t, admin, "june"); len(d.Entries) != 0 {
		t.Fatalf("a preview imported %+v", d.Entries)
	}
	code, out = upload(t, st, "june", false, good)
	if code != 201 || out.Imported != 2 || out.Roster != 2 {
		t.Fatalf("import a good file: %d %+v", code, out)
	}
	d := getSitting(t, admin, "june")
	if len(d.Entries) != 2 || d.Entries[0].Email != "ada@example.com" || d.Entries[0].ExternalID != "A-1" || d.Sitting.Roster != 2 {
		t.Fatalf("roster after import: %+v", d)
	}
	if _, b := send(t, st, "GET", "/api/admin/sittings/june", st.AdminToken, "", nil); bytes.Contains(b, []byte("code_hash")) {
		t.Fatalf("the roster shows code hashes: %s", b)
	}

	t.Run("BOM and CRLF", func(t *testing.T) {
		file := append([]byte("\xef\xbb\xbf"), "Name,Email\r\nCy Young,CY@Example.com\r\nDee,dee@example.com\r\n"...)
		code, out := upload(t, st, "june", false, file)
		if code != 201 || out.Imported != 2 {
			t.Fatalf("%d %+v", code, out)
		}
		entryByEmail(t, getSitting(t, admin, "june"), "cy@example.com")
	})

	bad := []byte("email,name\n" +
		"eve@example.com,Eve\n" + // line 2: good
		"not-an-email,Frank\n" + // line 3
		"ada@example.com,Ada again\n" + // line 4: already on the roster
		"gus@example.com,Gus\n" + // line 5: good
		"GUS@example.com,Gus twice\n" + // line 6: duplicate of line 5
		"hal@example.com,\n" + // line 7: no name
		"ivy@example.com," + strings.Repeat("n", 201) + "\n" + // line 8: too long
		"jo@example.com,Jo,extra\n") // line 9: a field too many
	wantLines := map[int]string{3: "email", 4: "email", 6: "email", 7: "name", 8: "name", 9: ""}
	before := len(getSitting(t, admin, "june").Entries)
	for _, preview := range []bool{true, false} {
		code, out := upload(t, st, "june", preview, bad)
		want := 200
		if !preview {
			want = 422
		}
		if code != want || out.ErrorCount != len(wantLines) || len(out.Errors) != len(wantLines) {
			t.Fatalf("bad rows, preview %v: %d %+v, want %d with %d row errors", preview, code, out, want, len(wantLines))
		}
		for _, e := range out.Errors {
			field, ok := wantLines[e.Line]
			if !ok || e.Field != field || e.Message == "" {
				t.Errorf("row error %+v: want line in %v with field %q", e, wantLines, field)
			}
		}
		if !preview && !strings.Contains(out.Error, "nothing was imported") {
			t.Errorf("refusal %q does not say nothing was imported", out.Error)
		}
	}
	if after := len(getSitting(t, admin, "june").Entries); after != before {
		t.Fatalf("a file with bad rows changed the roster from %d to %d entries", before, after)
	}

	latin1 := []byte("email,name\nzoe@example.com,Zo\xeb\n")
	many := rosterFile("email,name", 100_000, "\n")
	huge := rosterFile("email,name,external_id", 0, "\n")
	for len(huge) < 11_000_000 {
		huge = append(huge, "someone@example.com,Some One,ID-0000000000000000000000000000000000000000000000\n"...)
	}
	files := []struct {
		name, contentType string
		body              []byte
		want              int
		reason            string
	}{
		{"not UTF-8", "text/csv", latin1, 400, "UTF-8"},
		{"wrong columns", "text/csv", []byte("mail,full name\nzoe@example.com,Zoe\n"), 400, "unknown column"},
		{"no name column", "text/csv", []byte("email\nzoe@example.com\n"), 400, `no "name" column`},
		{"a column twice", "text/csv", []byte("email,name,email\n"), 400, "twice"},
		{"empty", "text/csv", nil, 400, "empty"},
		{"header only", "text/csv", []byte("email,name\n"), 400, "no candidates"},
		{"11 MB", "text/csv", huge, 413, "10 MiB"},
		{"100k rows", "text/csv", many, 413, "rows"},
		{"a form upload", "multipart/form-data; boundary=x", []byte("--x\r\n\r\n--x--\r\n"), 415, "CSV file itself"},
		{"unknown sitting", "text/csv", good, 404, "not found"},
	}
	for _, tc := range files {
		t.Run(tc.name, func(t *testing.T) {
			id := "june"
			if tc.want == 404 {
				id = "july"
			}
			code, b := send(t, st, "POST", "/api/admin/sittings/"+id+"/roster", st.AdminToken, tc.contentType, tc.body)
			var out importOut
			json.Unmarshal(b, &out)
			if code != tc.want || !strings.Contains(out.Error, tc.reason) {
				t.Fatalf("%d %.300s, want %d saying %q", code, b, tc.want, tc.reason)
			}
		})
	}
	t.Run("over 1 MiB from the panel's cookie", func(t *testing.T) {
		// Past the limit of every other body; the upload route reads it for
		// an admin signed in through the panel as for one with a bearer.
		var big bytes.Buffer
		big.WriteString("email,name,external_id\n")
		for i := range 15_000 {
			fmt.Fprintf(&big, "big%06d@example.com,Candidate %06d with a longer name,EXT-%060d\n", i, i, i)
		}
		panel := st.Client()
		code, err := panel.Do("POST", "/api/admin/login", map[string]string{"token": st.AdminToken}, nil)
		must(t, code, err, 200, "admin sign-in")
		req, err := http.NewRequest("POST", st.URL+"/api/admin/sittings/june/roster?preview=1", bytes.NewReader(big.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "text/csv")
		resp, err := panel.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out importOut
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 || out.Count != 15_000 || big.Len() <= 1<<20 {
			t.Fatalf("preview of %d bytes: %s %+v %v", big.Len(), resp.Status, out.Error, err)
		}
	})
	t.Run("misspelt preview", func(t *testing.T) {
		code, b := send(t, st, "POST", "/api/admin/sittings/june/roster?preview=yess", st.AdminToken, "text/csv", []byte("email,name\nkim@example.com,Kim\n"))
		if code != 400 || !bytes.Contains(b, []byte("preview")) {
			t.Fatalf("%d %s", code, b)
		}
		code, b = send(t, st, "POST", "/api/admin/sittings/june/roster?preview", st.AdminToken, "text/csv", []byte("email,name\nkim@example.com,Kim\n"))
		if code != 200 || !bytes.Contains(b, []byte(`"preview":true`)) {
			t.Fatalf("?preview alone: %d %s", code, b)
		}
	})
	t.Run("past the read limit", func(t *testing.T) {
		// Far over what a roster upload may send: the server stops reading.
		if code := sendCut(t, st, "/api/admin/sittings/june/roster", st.AdminToken, bytes.Repeat(huge, 2)); code != 413 && code != 0 {
			t.Fatalf("%d, want 413 or the upload cut off", code)
		}
	})
	if after := len(getSitting(t, admin, "june").Entries); after != before {
		t.Fatalf("refused files changed the roster from %d to %d entries", before, after)
	}
	if a := auditActions(getSitting(t, admin, "june")); a["roster-import"] != 2 {
		t.Fatalf("roster-import audit entries: %v, want 2", a)
	}
}

// TestRosterCodes: an export hands out fresh codes and links and retires
// every earlier code; a reissue retires one; a code admits only inside
// its sitting's window, and the same code always reaches the same session.
func TestRosterCodes(t *testing.T) {
	st := sittingStack(t)
	admin := st.Admin()
	newSitting(t, admin, "exam-day")
	code, out := upload(t, st, "exam-day", false, []byte("email,name\nann@example.com,Ann\nbo@example.com,=1+2\n"))
	if code != 201 || out.Imported != 2 {
		t.Fatalf("import: %d %+v", code, out)
	}

	first, _ := exportCodes(t, st, "exam-day")
	codes, links := exportCodes(t, st, "exam-day")
	for email, c := range codes {
		if _, err := sitting.NormalizeCode(c); err != nil || len(c) != 19 || c == first[email] {
			t.Fatalf("%s: code %q (first export %q)", email, c, first[email])
		}
		if want := st.Config.PublicURL + "/join#code=" + c; links[email] != want {
			t.Fatalf("%s: link %q, want %q", email, links[email], want)
		}
	}
	code, b := send(t, st, "POST", "/api/admin/sittings/exam-day/roster/export", st.AdminToken, "", nil)
	if code != 200 || !bytes.Contains(b, []byte(`,'=1+2,`)) {
		t.Fatalf("export keeps a formula-like name as text: %d %s", code, b)
	}
	codes, _ = exportCodes(t, st, "exam-day")

	code, old := signIn(t, st, first["ann@example.com"])
	if code != 401 || old.Error == "" {
		t.Fatalf("a code from an earlier export: %d %+v, want 401", code, old)
	}
	code, ann := signIn(t, st, strings.ToLower(strings.ReplaceAll(codes["ann@example.com"], "-", " ")))
	if code != 200 || ann.SessionID == "" || ann.Token == "" {
		t.Fatalf("sign in with the exported code, typed loosely: %d %+v", code, ann)
	}
	code, again := signIn(t, st, codes["ann@example.com"])
	if code != 200 || again.SessionID != ann.SessionID || again.Token == ann.Token {
		t.Fatalf("second sign-in: %d %+v, want session %s with a new token", code, again, ann.SessionID)
	}

	d := getSitting(t, admin, "exam-day")
	bo := entryByEmail(t, d, "bo@example.com")
	if e := entryByEmail(t, d, "ann@example.com"); e.SessionID != ann.SessionID || e.SessionStatus != "created" || d.Sitting.SignedIn != 1 {
		t.Fatalf("roster after ann signed in: %+v, sitting %+v", e, d.Sitting)
	}
	var re struct {
		Code string `json:"code"`
		Link string `json:"link"`
	}
	code, err := admin.Do("POST", "/api/admin/sittings/exam-day/roster/"+bo.ID+"/reissue", nil, &re)
	must(t, code, err, 200, "reissue")
	if re.Code == "" || re.Link != st.Config.PublicURL+"/join#code="+re.Code {
		t.Fatalf("reissue answered %+v", re)
	}
	if code, _ := signIn(t, st, codes["bo@example.com"]); code != 401 {
		t.Fatalf("the code before the reissue: %d, want 401", code)
	}
	if code, out := signIn(t, st, re.Code); code != 200 || out.SessionID == "" {
		t.Fatalf("the reissued code: %d %+v", code, out)
	}

	for _, tc := range []struct{ name, code string }{
		{"too short", "7KQ2-M9XD-4HTV"},
		{"too long", codes["ann@example.com"] + "-AAAA"},
		{"outside the alphabet", "7KQ2-M9XD-4HTV-P0R!"},
		{"U is not in the alphabet", "UUUU-UUUU-UUUU-UUUU"},
	} {
		t.Run("code "+tc.name, func(t *testing.T) {
			if code, out := signIn(t, st, tc.code); code != 400 || !strings.Contains(out.Error, "16 letters and digits") {
				t.Fatalf("%d %+v, want 400 saying what a code looks like", code, out)
			}
		})
	}

	t.Run("before and after the window", func(t *testing.T) {
		opens, closes := window(time.Hour, 2*time.Hour)
		code, err := admin.Do("POST", "/api/admin/sittings", map[string]any{"id": "later", "opens": opens, "closes": closes}, nil)
		must(t, code, err, 201, "create a later sitting")
		if code, out := upload(t, st, "later", false, []byte("email,name\ncal@example.com,Cal\n")); code != 201 {
			t.Fatalf("import: %d %+v", code, out)
		}
		later, _ := exportCodes(t, st, "later")
		if code, out := signIn(t, st, later["cal@example.com"]); code != 403 || !strings.Contains(out.Error, "not opened yet") {
			t.Fatalf("before the window: %d %+v, want 403", code, out)
		}
		opens, closes = window(-2*time.Hour, -time.Hour)
		code, err = admin.Do("PATCH", "/api/admin/sittings/later", map[string]any{"opens": opens, "closes": closes}, nil)
		must(t, code, err, 200, "move the window into the past")
		if code, out := signIn(t, st, later["cal@example.com"]); code != 403 || !strings.Contains(out.Error, "closed") {
			t.Fatalf("after the window: %d %+v, want 403", code, out)
		}
	})

	if a := auditActions(getSitting(t, admin, "exam-day")); a["roster-export"] != 4 || a["code-reissue"] != 1 {
		t.Fatalf("audit: %v, want 4 exports and 1 reissue", a)
	}
}

// walk moves a session to state through the store, as a lab's life would.
func walk(t *testing.T, st *testlab.Stack, id string, to session.State) {
	t.Helper()
	if _, err := st.Store.Update(context.Background(), id, func(x *session.Session) error { return x.WalkTo(to, time.Now()) }); err != nil {
		t.Fatalf("walk session %s to %s: %v", id, to, err)
	}
}

// TestRosterResetAndRemove: an entry keeps its one session until an admin
// resets it, which is refused while the session runs; an entry whose
// session runs cannot be removed either, and a removed entry's code admits
// no one.
func TestRosterResetAndRemove(t *testing.T) {
	st := sittingStack(t)
	admin := st.Admin()
	newSitting(t, admin, "resets")
	if code, out := upload(t, st, "resets", false, []byte("email,name\nkai@example.com,Kai\nlee@example.com,Lee\n")); code != 201 {
		t.Fatalf("import: %d %+v", code, out)
	}
	codes, _ := exportCodes(t, st, "resets")
	code, first := signIn(t, st, codes["kai@example.com"])
	must(t, code, nil, 200, "sign in")
	walk(t, st, first.SessionID, session.StateReady)
	d := getSitting(t, admin, "resets")
	kai, lee := entryByEmail(t, d, "kai@example.com"), entryByEmail(t, d, "lee@example.com")
	if kai.SessionStatus != "ready" || d.Sitting.Running != 1 || d.Sitting.SignedIn != 1 {
		t.Fatalf("roster while kai's lab runs: %+v, sitting %+v", kai, d.Sitting)
	}

	base := "/api/admin/sittings/resets/roster/"
	for _, tc := range []struct{ method, path string }{{"POST", base + kai.ID + "/reset"}, {"DELETE", base + kai.ID}} {
		var out struct {
			Error string `json:"error"`
		}
		code, err := admin.Do(tc.method, tc.path, nil, &out)
		if err != nil || code != 409 || !strings.Contains(out.Error, "still running") || !strings.Contains(out.Error, "ready") {
			t.Fatalf("%s %s while the lab runs: %d %q %v, want 409 with the reason", tc.method, tc.path, code, out.Error, err)
		}
	}
	if code, again := signIn(t, st, codes["kai@example.com"]); code != 200 || again.SessionID != first.SessionID {
		t.Fatalf("after the refusals the code signs in to %q (%d), want %s", again.SessionID, code, first.SessionID)
	}
	for _, tc := range []struct {
		name, method, path string
		want               int
	}{
		{"reset an entry with no session", "POST", base + lee.ID + "/reset", 409},
		{"reset an unknown entry", "POST", base + "zzzzzzzzzz/reset", 404},
		{"reset a malformed entry", "POST", base + "Kai!/reset", 400},
		{"remove an entry of another sitting", "DELETE", "/api/admin/sittings/practice/roster/" + kai.ID, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out struct {
				Error string `json:"error"`
			}
			code, err := admin.Do(tc.method, tc.path, nil, &out)
			if err != nil || code != tc.want || out.Error == "" {
				t.Fatalf("%d %q %v, want %d with a reason", code, out.Error, err, tc.want)
			}
		})
	}

	walk(t, st, first.SessionID, session.StateCompleted)
	var reset struct {
		Previous string `json:"previous_session"`
	}
	code, err := admin.Do("POST", base+kai.ID+"/reset", nil, &reset)
	must(t, code, err, 200, "reset after the session ended")
	if reset.Previous != first.SessionID {
		t.Fatalf("reset answered previous session %q, want %s", reset.Previous, first.SessionID)
	}
	code, second := signIn(t, st, codes["kai@example.com"])
	if code != 200 || second.SessionID == "" || second.SessionID == first.SessionID {
		t.Fatalf("sign-in after the reset: %d %+v, want a new session (the first was %s)", code, second, first.SessionID)
	}
	if sess, err := st.Store.Get(context.Background(), first.SessionID); err != nil || sess.Status != session.StateCompleted {
		t.Fatalf("the first session's record after the reset: %+v %v", sess, err)
	}

	code, err = admin.Do("DELETE", base+lee.ID, nil, nil)
	must(t, code, err, 200, "remove an entry with no session")
	if code, _ := signIn(t, st, codes["lee@example.com"]); code != 401 {
		t.Fatalf("a removed entry's code: %d, want 401", code)
	}
	d = getSitting(t, admin, "resets")
	if len(d.Entries) != 1 || d.Entries[0].SessionID != second.SessionID {
		t.Fatalf("roster after the removal: %+v", d.Entries)
	}
	if a := auditActions(d); a["entry-reset"] != 1 || a["entry-remove"] != 1 {
		t.Fatalf("audit: %v, want one reset and one removal", a)
	}
}

// TestSittingDelete: a sitting is deleted only once every session of its
// roster has ended; afterwards its codes admit no one and its id is free.
func TestSittingDelete(t *testing.T) {
	st := sittingStack(t)
	admin := st.Admin()
	newSitting(t, admin, "gone")
	if code, out := upload(t, st, "gone", false, []byte("email,name\nmo@example.com,Mo\nny@example.com,Ny\n")); code != 201 {
		t.Fatalf("import: %d %+v", code, out)
	}
	codes, _ := exportCodes(t, st, "gone")
	code, mo := signIn(t, st, codes["mo@example.com"])
	must(t, code, nil, 200, "sign in")
	var out struct {
		Error string `json:"error"`
	}
	code, err := admin.Do("DELETE", "/api/admin/sittings/gone", nil, &out)
	if err != nil || code != 409 || !strings.Contains(out.Error, "1 of its sessions") {
		t.Fatalf("delete while a session is open: %d %q %v, want 409", code, out.Error, err)
	}
	if code, again := signIn(t, st, codes["mo@example.com"]); code != 200 || again.SessionID != mo.SessionID {
		t.Fatalf("after the refused delete: %d %+v", code, again)
	}
	walk(t, st, mo.SessionID, session.StateCompleted)
	code, err = admin.Do("DELETE", "/api/admin/sittings/gone", nil, nil)
	must(t, code, err, 200, "delete")
	for email, c := range codes {
		if code, _ := signIn(t, st, c); code != 401 {
			t.Fatalf("%s's code after the delete: %d, want 401", email, code)
		}
	}
	code, err = admin.Do("GET", "/api/admin/sittings/gone", nil, nil)
	must(t, code, err, 404, "get a deleted sitting")
	if code, _ := upload(t, st, "gone", false, []byte("email,name\nmo@example.com,Mo\n")); code != 404 {
		t.Fatalf("import into a deleted sitting: %d, want 404", code)
	}
	if sess, err := st.Store.Get(context.Background(), mo.SessionID); err != nil || sess.Status != session.StateCompleted {
		t.Fatalf("the session's record after the delete: %+v %v", sess, err)
	}

	// The id is free again, and the old roster does not come back with it.
	newSitting(t, admin, "gone")
	if code, out := upload(t, st, "gone", false, []byte("email,name\nmo@example.com,Mo\n")); code != 201 {
		t.Fatalf("import mo into the new sitting: %d %+v", code, out)
	}
	if d := getSitting(t, admin, "gone"); len(d.Entries) != 1 || len(d.Audit) != 2 {
		t.Fatalf("the new sitting: %+v", d)
	}
}

// TestSittingRoutesRefuseOthers: every sitting route answers 401 without
// credentials and 403 to a candidate, and changes nothing.
func TestSittingRoutesRefuseOthers(t *testing.T) {
	st := sittingStack(t)
	admin := st.Admin()
	newSitting(t, admin, "guarded")
	if code, out := upload(t, st, "guarded", false, []byte("email,name\nol@example.com,Ol\n")); code != 201 {
		t.Fatalf("import: %d %+v", code, out)
	}
	entry := getSitting(t, admin, "guarded").Entries[0].ID
	cand := st.Client()
	cand.Login(t, "pat@example.com") // through the practice sitting
	opens, closes := window(-time.Minute, time.Hour)
	csvBody := []byte("email,name\nqi@example.com,Qi\n")
	routes := []struct {
		method, path string
		body         []byte
	}{
		{"GET", "/api/admin/sittings", nil},
		{"POST", "/api/admin/sittings", []byte(`{"id":"mine","opens":"` + opens + `","closes":"` + closes + `"}`)},
		{"GET", "/api/admin/sittings/guarded", nil},
		{"PATCH", "/api/admin/sittings/guarded", []byte(`{"capacity":1}`)},
		{"DELETE", "/api/admin/sittings/guarded", nil},
		{"POST", "/api/admin/sittings/guarded/roster?preview=1", csvBody},
		{"POST", "/api/admin/sittings/guarded/roster", csvBody},
		{"POST", "/api/admin/sittings/guarded/roster/export", nil},
		{"POST", "/api/admin/sittings/guarded/roster/" + entry + "/reissue", nil},
		{"POST", "/api/admin/sittings/guarded/roster/" + entry + "/reset", nil},
		{"DELETE", "/api/admin/sittings/guarded/roster/" + entry, nil},
	}
	for _, who := range []struct {
		name, token string
		want        int
	}{{"no credentials", "", 401}, {"candidate token", cand.Token, 403}} {
		t.Run(who.name, func(t *testing.T) {
			for _, r := range routes {
				code, b := send(t, st, r.method, r.path, who.token, "application/json", r.body)
				if code != who.want || !bytes.Contains(b, []byte("admin credentials required")) {
					t.Errorf("%s %s: %d %s, want %d", r.method, r.path, code, b, who.want)
				}
			}
		})
	}
	d := getSitting(t, admin, "guarded")
	if len(d.Entries) != 1 || d.Sitting.Capacity != 5 || len(d.Audit) != 2 {
		t.Fatalf("refused requests changed the sitting: %+v", d)
	}
	t.Run("a candidate's large upload is cut at the usual limit", func(t *testing.T) {
		if code := sendCut(t, st, "/api/admin/sittings/guarded/roster", cand.Token, rosterFile("email,name", 60_000, "\n")); code != 413 && code != 0 {
			t.Fatalf("%d, want 413 or the upload cut off", code)
		}
	})
}

// TestSittingsPanelInBrowser drives the panel's sittings in headless
// Chromium: sign in, create a sitting, choose a roster file with a bad row
// (highlighted, Import stays off), then a good one, import it, see the
// roster, and reissue one code, which then signs the candidate in.
func TestSittingsPanelInBrowser(t *testing.T) {
	st := sittingStack(t)
	dir := t.TempDir()
	badFile, goodFile := filepath.Join(dir, "bad.csv"), filepath.Join(dir, "good.csv")
	if err := os.WriteFile(badFile, []byte("email,name\numa@example.com,Uma\nnot-an-email,Vic\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goodFile, []byte("email,name,external_id\r\numa@example.com,Uma,U-1\r\nvic@example.com,Vic,U-2\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	ctx := startBrowser(t, browserTimeout)

	step := func(name string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		browserStep(t, ctx, name, actions...)
	}
	js := evalJS
	poll := func(expr string) chromedp.Action[chromedp.Void] { return pollJS(expr, browserTimeout) }
	byID := func(id string) string { return `document.getElementById(` + jsString(id) + `)` }

	step("sign in on the sittings page",
		chromedp.Navigate(st.URL+"/admin/sittings"),
		chromedp.WaitVisible(chromedp.CSS("#login-token")),
		chromedp.SendKeys(chromedp.CSS("#login-token"), st.AdminToken),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#sittings")),
		poll(`document.querySelector('#sittings-table tr[data-id="practice"]') !== null`),
	)
	step("create a sitting open since ten minutes ago",
		poll(byID("c-opens")+`.value !== ""`),
		js(`(function(){var d=new Date(Date.now()-10*60000), p=function(n){return String(n).padStart(2,"0");};
			`+byID("c-opens")+`.value=d.getFullYear()+"-"+p(d.getMonth()+1)+"-"+p(d.getDate())+"T"+p(d.getHours())+":"+p(d.getMinutes());})()`),
		chromedp.SendKeys(chromedp.CSS("#c-id"), "browser-day"),
		chromedp.SendKeys(chromedp.CSS("#c-title"), "Browser day"),
		chromedp.Click(chromedp.CSS(`#create-form button[type="submit"]`)),
		poll(`location.pathname === "/admin/sittings/browser-day" && `+byID("t-id")+`.textContent === "browser-day"`),
		poll(byID("t-state")+`.textContent === "open"`),
	)
	step("a file with a bad row: highlighted, nothing to import",
		chromedp.SetUploadFiles(chromedp.CSS("#roster-file"), []string{badFile}),
		poll(byID("preview-summary")+`.textContent.includes("1 row with problems")`),
		poll(`document.querySelectorAll("#preview tbody tr.bad").length === 1`),
	)
	bad, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#preview tbody tr.bad").textContent`))
	if err != nil || !strings.Contains(bad, "not-an-email,Vic") || !strings.Contains(bad, "email:") {
		t.Fatalf("the bad row shows %q (%v), want its line and the problem", bad, err)
	}
	if off, err := chromedp.Run(ctx, chromedp.Evaluate[bool](byID("import")+`.disabled`)); err != nil || !off {
		t.Fatalf("Import enabled with a bad row in the file (%v)", err)
	}
	step("a good file: previewed, imported, on the roster",
		chromedp.SetUploadFiles(chromedp.CSS("#roster-file"), []string{goodFile}),
		poll(byID("preview-summary")+`.textContent.includes("2 candidates ready to import")`),
		poll(`document.querySelectorAll("#preview tbody tr").length === 2 && !`+byID("import")+`.disabled`),
		chromedp.Click(chromedp.CSS("#import")),
		poll(`document.querySelectorAll("#roster tbody tr[data-entry]").length === 2`),
		poll(byID("t-message")+`.textContent.includes("Imported 2 candidates")`),
	)
	step("reissue a code: shown once",
		js(`window.confirm = function () { return true; }`),
		chromedp.Click(chromedp.CSS(`#roster tr[data-email="vic@example.com"] .row-actions button`)),
		chromedp.WaitVisible(chromedp.CSS("#issued")),
		poll(byID("issued-code")+`.value.length === 19`),
		poll(`document.getElementById("t-audit").textContent.includes("code-reissue")`),
	)
	code, err := chromedp.Run(ctx, chromedp.Evaluate[string](byID("issued-code")+`.value`))
	if err != nil {
		t.Fatal(err)
	}
	link, _ := chromedp.Run(ctx, chromedp.Evaluate[string](byID("issued-link")+`.value`))
	if link != st.Config.PublicURL+"/join#code="+code {
		t.Fatalf("the panel shows link %q for code %q", link, code)
	}
	if status, out := signIn(t, st, code); status != 200 || out.SessionID == "" {
		t.Fatalf("sign in with the code the panel showed: %d %+v", status, out)
	}
}
