package platform_test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/evidence"
	"github.com/examlab/examlab/testlab"
)

// TestBadInputIsRefused sends malformed, oversized, hostile and
// unauthenticated requests and checks each gets the right 4xx and that
// nothing lands outside the sessions' folders.
func TestBadInputIsRefused(t *testing.T) {
	st := testlab.Start(t, testlab.Options{})
	alice := st.Client()
	aliceID := alice.Login(t, "alice@example.com")
	bob := st.Client()
	bobID := bob.Login(t, "bob@example.com")
	anon := st.Client()
	wrong := st.Client()
	wrong.Token = "not-a-real-token"
	admin := st.Admin()
	wrongAdmin := st.Client()
	wrongAdmin.Token = "wrong-admin-token-0000000000"

	big := `{"value":"` + strings.Repeat("x", 70<<10) + `"}`
	ans := "/api/session/" + aliceID + "/answers/"
	tests := []struct {
		name   string
		c      *testlab.Client
		method string
		path   string
		body   any
		want   int
	}{
		{"login malformed json", anon, "POST", "/api/login", `{"email":`, 400},
		{"login not an email", anon, "POST", "/api/login", `{"email":"nobody"}`, 400},
		{"login unknown field", anon, "POST", "/api/login", `{"email":"a@b.co","admin":true}`, 400},
		{"login empty body", anon, "POST", "/api/login", nil, 400},
		{"answer malformed json", alice, "PUT", ans + "t1-addressing", `{"value":`, 400},
		{"answer without value", alice, "PUT", ans + "t1-addressing", `{}`, 400},
		{"answer oversized", alice, "PUT", ans + "t1-addressing", big, 413},
		{"task id traversal", alice, "PUT", ans + "..%2F..%2Fx", `{"value":"x"}`, 404},
		{"task id dotted", alice, "PUT", ans + "..", `{"value":"x"}`, 404},
		{"unknown task", alice, "PUT", ans + "t99", `{"value":"x"}`, 404},
		{"no token", anon, "PUT", ans + "t1-addressing", `{"value":"x"}`, 401},
		{"wrong token", wrong, "PUT", ans + "t1-addressing", `{"value":"x"}`, 401},
		{"other candidate's session", bob, "PUT", ans + "t1-addressing", `{"value":"x"}`, 403},
		{"other candidate's status", bob, "GET", "/api/session/" + aliceID + "/status", nil, 403},
		{"other candidate starts", bob, "POST", "/api/session/" + aliceID + "/start", nil, 403},
		{"other candidate submits", bob, "POST", "/api/session/" + aliceID + "/submit", nil, 403},
		{"unknown session as candidate", alice, "GET", "/api/session/zzzzzzzzzzzz/status", nil, 403},
		{"unknown session as admin", admin, "GET", "/api/admin/session/zzzzzzzzzzzz/details", nil, 404},
		{"malformed session id as admin", admin, "GET", "/api/admin/session/..%2F..%2Fetc/details", nil, 400},
		{"unknown session snapshot", admin, "POST", "/api/session/zzzzzzzzzzzz/snapshot", nil, 404},
		{"history for unknown terminal", alice, "POST", "/api/session/" + aliceID + "/terminal/mars/history", `{"commands":["ls"]}`, 404},
		{"history terminal traversal", alice, "POST", "/api/session/" + aliceID + "/terminal/..%2Fx/history", `{"commands":["ls"]}`, 400},
		{"history malformed", alice, "POST", "/api/session/" + aliceID + "/terminal/tokyo/history", `[1,2`, 400},
		{"admin list without auth", anon, "GET", "/api/admin/sessions", nil, 401},
		{"admin list wrong token", wrongAdmin, "GET", "/api/admin/sessions", nil, 401},
		{"admin list candidate token", alice, "GET", "/api/admin/sessions", nil, 403},
		{"admin details candidate token", alice, "GET", "/api/admin/session/" + aliceID + "/details", nil, 403},
		{"snapshot candidate token", alice, "POST", "/api/session/" + aliceID + "/snapshot", nil, 403},
		{"cleanup candidate token", alice, "POST", "/api/session/" + aliceID + "/cleanup", nil, 403},
		{"cleanup no token", anon, "POST", "/api/session/" + aliceID + "/cleanup", nil, 401},
		{"admin list bad status", admin, "GET", "/api/admin/sessions?status=sleeping", nil, 400},
		{"admin list bad sort", admin, "GET", "/api/admin/sessions?sort=password", nil, 400},
		{"admin list bad page", admin, "GET", "/api/admin/sessions?page=-1", nil, 400},
		{"admin login wrong token", anon, "POST", "/api/admin/login", `{"token":"guess-guess-guess-guess"}`, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out struct {
				Error string `json:"error"`
			}
			code, err := tc.c.Do(tc.method, tc.path, tc.body, &out)
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.want {
				t.Fatalf("%s %s = %d (%s), want %d", tc.method, tc.path, code, out.Error, tc.want)
			}
			if out.Error == "" {
				t.Errorf("%d answer has no error message", code)
			}
		})
	}

	// A body over the server's limit is refused from its Content-Length,
	// before any of it is read. The request goes out as headers only, so
	// the refusal is read rather than raced by the server closing the
	// connection while a client is still sending.
	t.Run("answer over body limit", func(t *testing.T) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(alice.Base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: examlab\r\nContent-Type: application/json\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n",
			ans+"t1-addressing", alice.Token, 2<<20)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status = %d, want 413", resp.StatusCode)
		}
	})

	// Nothing was stored by any refused request: only the two sessions'
	// metadata exists, beside the practice sitting they signed in through
	// (its record and their two roster entries).
	var files []string
	root := st.Config.StateDir
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, strings.TrimPrefix(p, root+"/"))
		}
		return nil
	})
	want := map[string]bool{
		"sessions/" + aliceID + "/metadata.json": true,
		"sessions/" + bobID + "/metadata.json":   true,
	}
	want["sittings/practice/sitting.json"] = true
	want[evidence.KeyFile] = true // made when the platform starts
	entries := 0
	for _, f := range files {
		if strings.HasPrefix(f, "sittings/practice/batches/") && strings.HasSuffix(f, ".json") && strings.Count(f, "/") == 4 {
			entries++
			continue
		}
		if !want[f] {
			t.Errorf("unexpected file %s after refused requests", f)
		}
	}
	if len(files) != len(want)+2 || entries != 2 {
		t.Errorf("files = %v", files)
	}

	// A submitted session takes no more answers and cannot start again.
	if code, _ := alice.Do("POST", "/api/session/"+aliceID+"/submit", nil, nil); code != http.StatusAccepted {
		t.Fatalf("submit = %d", code)
	}
	for _, r := range []struct{ method, path, body string }{
		{"PUT", ans + "t1-addressing", `{"value":"late"}`},
		{"POST", "/api/session/" + aliceID + "/start", ""},
	} {
		var body any
		if r.body != "" {
			body = r.body
		}
		if code, _ := alice.Do(r.method, r.path, body, nil); code != http.StatusConflict {
			t.Errorf("%s %s after submit = %d, want 409", r.method, r.path, code)
		}
	}
}
