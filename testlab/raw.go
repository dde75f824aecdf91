package testlab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/examlab/examlab/lab"
)

func (e *Engine) call(ctx context.Context, method, path string, q url.Values, body any) error {
	resp, err := e.send(ctx, e.hc, method, path, q, body)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// send makes one Engine API request through hc and returns the answer,
// or an error carrying the engine's message when it is not a success.
func (e *Engine) send(ctx context.Context, hc *http.Client, method, path string, q url.Values, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := "http://docker/v1.41" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotModified {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, msg)
	}
	return resp, nil
}

// RawLab is the cold-start baseline: the bare Engine API calls that bring
// up a lab of spec's shape — one internal network, then each node's
// container created and started, four at a time — with none of the
// platform around them (no queue, no store, no convergence checks).
func (e *Engine) RawLab(ctx context.Context, spec lab.Spec) error {
	netBody := map[string]any{
		"Name": spec.Network, "Driver": "bridge", "Internal": true, "CheckDuplicate": true,
		"Labels": map[string]string{lab.LabelManaged: "true", lab.LabelSession: spec.SessionID},
	}
	if err := e.call(ctx, "POST", "/networks/create", nil, netBody); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(spec.Nodes))
	sem := make(chan struct{}, 4)
	for _, n := range spec.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			body := map[string]any{
				"Image": n.Image, "Hostname": n.Hostname, "Labels": n.Labels,
				"HostConfig": map[string]any{
					"NetworkMode": spec.Network, "Memory": int64(n.MemoryMB) << 20,
					"NanoCpus": int64(n.CPUs * 1e9), "PidsLimit": n.PidsLimit,
					"CapDrop": []string{"ALL"}, "CapAdd": n.CapAdd,
				},
				"NetworkingConfig": map[string]any{"EndpointsConfig": map[string]any{
					spec.Network: map[string]any{"Aliases": []string{n.Name}},
				}},
			}
			if err := e.call(ctx, "POST", "/containers/create", url.Values{"name": {n.Container}}, body); err != nil {
				errs <- err
				return
			}
			errs <- e.call(ctx, "POST", "/containers/"+n.Container+"/start", nil, nil)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// RemoveRawLab removes what RawLab created.
func (e *Engine) RemoveRawLab(ctx context.Context, spec lab.Spec) error {
	for _, n := range spec.Nodes {
		if err := e.call(ctx, "DELETE", "/containers/"+n.Container, url.Values{"force": {"1"}}, nil); err != nil {
			return err
		}
	}
	return e.call(ctx, "DELETE", "/networks/"+spec.Network, nil, nil)
}

// Percentiles returns the median and 95th percentile of ds.
func Percentiles(ds []time.Duration) (median, p95 time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	idx := func(q float64) int {
		i := int(q*float64(len(s))+0.5) - 1
		return min(max(i, 0), len(s)-1)
	}
	return s[idx(0.5)], s[idx(0.95)]
}

// ReportDurations adds median and p95 (in ms) to a benchmark's output.
func ReportDurations(b interface{ ReportMetric(float64, string) }, ds []time.Duration) {
	med, p95 := Percentiles(ds)
	b.ReportMetric(float64(med.Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(p95.Microseconds())/1000, "ms-p95")
}
