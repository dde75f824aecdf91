// Package compose is examlab's one-host deployment as containers: build.sh
// builds the examlab and Redis images without a registry, and
// docker-compose.yml runs them with the Docker socket and the state and
// Redis volumes. Its test brings the deployment up, runs a session through
// it and tears it down.
package compose
