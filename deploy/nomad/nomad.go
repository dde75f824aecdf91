// Package nomad is examlab deployed as Nomad jobs: Redis, api, worker and
// relay (the *.nomad.hcl files beside this one). Its test registers them on
// a real agent, waits until their checks pass and runs a candidate's
// session through the Nomad-hosted API.
package nomad
