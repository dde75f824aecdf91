package api_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/testlab"
)

// TestCandidateNeverReadsTheRuntimesWords: a provision that fails with the
// runtime's own words — an internal address among them — shows the
// candidate plain words that their time has not started, while the exam
// staff read the whole reason.
func TestCandidateNeverReadsTheRuntimesWords(t *testing.T) {
	const internal = "10.77.0.5:4646"
	rt := labtest.NewFlaky(labtest.NewMemory(labtest.MemoryOptions{}))
	rt.FailWhen(func(c labtest.Call) error {
		if c.Method == "Provision" {
			return errors.New(`register job: Put "http://` + internal + `/v1/jobs": dial tcp ` + internal + `: connect: connection refused`)
		}
		return nil
	})
	st := testlab.Start(t, testlab.Options{Platform: platform.Options{Runtime: rt}})
	c := st.Client()
	id := c.Login(t, "plain@example.com")
	if code, err := c.Do("POST", "/api/session/"+id+"/start", nil, nil); err != nil || (code != 202 && code != 200) {
		t.Fatalf("start: %d %v", code, err)
	}
	var s testlab.Session
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if s = c.Status(t, id); s.Error != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failed attempt within a minute: %+v", s)
		}
	}
	if s.Error != session.NoticePreparing || strings.Contains(s.Error, internal) {
		t.Errorf("the candidate reads %q, want %q", s.Error, session.NoticePreparing)
	}
	var d struct {
		Session struct {
			Error string `json:"error"`
		} `json:"session"`
	}
	if code, err := st.Admin().Do("GET", "/api/admin/session/"+id+"/details", nil, &d); err != nil || code != 200 {
		t.Fatalf("details: %d %v", code, err)
	}
	if !strings.Contains(d.Session.Error, internal) {
		t.Errorf("the exam staff read %q, want the runtime's whole reason", d.Session.Error)
	}
}
