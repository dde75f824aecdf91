package testlab

import (
	"context"
	"net/url"
	"testing"
	"time"
)

// HoldNetwork attaches a running container that belongs to no lab (it
// carries none of examlab's labels) to network, from image. With it
// attached the engine refuses to remove the network ("has active
// endpoints") even after every container of the lab is gone: the way an
// engine that will not let go of a lab's network looks to examlab, made
// on purpose. The returned function removes the container, and with it
// the hold; the test's cleanup removes it too.
func (e *Engine) HoldNetwork(t testing.TB, name, network, image string) (release func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	body := map[string]any{
		"Image":      image,
		"Entrypoint": []string{"sleep"},
		"Cmd":        []string{"3600"},
		"HostConfig": map[string]any{"NetworkMode": network, "Memory": 32 << 20, "AutoRemove": false},
	}
	if err := e.call(ctx, "POST", "/containers/create", url.Values{"name": {name}}, body); err != nil {
		t.Fatalf("create the container holding %s: %v", network, err)
	}
	release = func() { e.RemoveContainer(t, name) }
	t.Cleanup(release)
	if err := e.call(ctx, "POST", "/containers/"+url.PathEscape(name)+"/start", nil, nil); err != nil {
		t.Fatalf("start the container holding %s: %v", network, err)
	}
	return release
}
