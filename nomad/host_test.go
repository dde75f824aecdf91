package nomad

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/lab"
)

// TestHostTrouble maps allocation and client statuses to node states
// without a cluster: every combination the lost-lab sweep relies on.
func TestHostTrouble(t *testing.T) {
	since := time.Date(2026, 12, 1, 12, 3, 4, 0, time.UTC)
	alloc := func(client, desired string) *api.AllocationListStub {
		return &api.AllocationListStub{ID: "0a1b2c3d-0000-0000-0000-000000000000", NodeName: "client2",
			ClientStatus: client, DesiredStatus: desired, ModifyTime: since.UnixNano()}
	}
	node := func(status string) *clientView { return &clientView{Name: "client2", Status: status, Since: since} }
	tests := []struct {
		name   string
		a      *api.AllocationListStub
		c      *clientView
		want   lab.State
		detail string
	}{
		{"running on a ready client", alloc("running", "run"), node("ready"), "", ""},
		{"running, client unknown to us", alloc("running", "run"), nil, "", ""},
		{"lost, client down", alloc("lost", "stop"), node("down"), lab.StateLost, "client client2 is down since 12:03:04 UTC; allocation 0a1b2c3d is lost"},
		{"lost, client not listed", alloc("lost", "stop"), nil, lab.StateLost, "allocation 0a1b2c3d on client client2 is lost since 12:03:04 UTC"},
		{"running, client down", alloc("running", "run"), node("down"), lab.StateLost, "client client2 is down since 12:03:04 UTC"},
		{"unknown", alloc("unknown", "run"), node("disconnected"), lab.StateUnknown, "client client2 stopped reporting since 12:03:04 UTC"},
		{"running, client disconnected", alloc("running", "run"), node("disconnected"), lab.StateUnknown, "client client2 is disconnected since 12:03:04 UTC"},
		{"pending, client down", alloc("pending", "run"), node("down"), lab.StateLost, "is down"},
		{"completed on a down client", alloc("complete", "stop"), node("down"), "", ""},
		{"failed on a down client", alloc("failed", "run"), node("down"), "", ""},
		{"stopping on a down client", alloc("running", "stop"), node("down"), "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, detail := hostTrouble(tc.a, tc.c)
			if got != tc.want || !strings.Contains(detail, tc.detail) || (tc.want == "") != (detail == "") {
				t.Errorf("hostTrouble = %q, %q; want %q, containing %q", got, detail, tc.want, tc.detail)
			}
		})
	}
}
