package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/docker"
)

// labnetDownWait is how long `labnet down` waits for the lab's containers
// to leave the network; the poststop task runs as the nodes stop.
const labnetDownWait = 2 * time.Minute

// labnet creates or removes a Nomad lab's network on the client it runs
// on. The session's job runs it as its prestart and poststop tasks:
//
//	examlab labnet up -session ID [-exam ID] [-subnet-pool CIDR] [-subnet-prefix N]
//	examlab labnet down -session ID [-wait 2m]
func labnet(ctx context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "up" && args[0] != "down") {
		fmt.Fprintln(os.Stderr, "usage: examlab labnet up|down -session ID [flags]")
		return flag.ErrHelp
	}
	verb := args[0]
	def := config.Default()
	fs := flag.NewFlagSet("labnet "+verb, flag.ContinueOnError)
	session := fs.String("session", "", "session id (required)")
	examID := fs.String("exam", "", "exam id, kept as a label on the network (up)")
	pool := fs.String("subnet-pool", def.SubnetPool, "pool the session's subnet is carved from (up)")
	prefix := fs.Int("subnet-prefix", def.SubnetPrefix, "prefix length of the session's subnet (up)")
	wait := fs.Duration("wait", labnetDownWait, "how long to wait for containers to leave the network (down)")
	host := fs.String("docker-host", os.Getenv("DOCKER_HOST"), "Docker Engine API address (default: DOCKER_HOST, else the local socket)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *session == "" {
		return errors.New("labnet: -session is required")
	}
	rt, err := docker.New(docker.Options{Host: *host, SubnetPool: *pool, SubnetPrefix: *prefix})
	if err != nil {
		return err
	}
	if verb == "up" {
		n, err := rt.LabnetUp(ctx, *session, *examID)
		if err != nil {
			return err
		}
		fmt.Printf("network %s (%s) subnet %s\n", n.Name, n.ID[:12], n.Subnet)
		return nil
	}
	if err := rt.LabnetDown(ctx, *session, *wait); err != nil {
		return err
	}
	fmt.Printf("network of session %s removed\n", *session)
	return nil
}
