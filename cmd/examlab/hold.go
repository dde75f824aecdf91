package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/examlab/examlab/holder"
)

// hold runs the terminal holder's two halves inside a lab node:
//
//	examlab hold attach -name NODE [flags] -- SHELL...   what the relay execs
//	examlab hold serve  -name NODE [flags] -- SHELL...   started by attach
func hold(ctx context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "attach" && args[0] != "serve") {
		return errors.New("hold: usage: examlab hold attach|serve -name NODE [-dir D] [-ring BYTES] [-grace D] -- SHELL")
	}
	fs := flag.NewFlagSet("hold "+args[0], flag.ContinueOnError)
	name := fs.String("name", "", "the terminal's name (the node)")
	dir := fs.String("dir", holder.DefaultDir, "the root-only folder of the holders' sockets")
	ringBytes := fs.Int("ring", holder.DefaultRingBytes, "scrollback kept for a reattach, in bytes")
	grace := fs.Duration("grace", holder.DefaultGrace, "how long the shell waits for an attach before it is hung up")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	shell := fs.Args()
	if len(shell) == 0 {
		return errors.New("hold: no shell to run (after --)")
	}
	if args[0] == "attach" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("hold: %w", err)
		}
		start := append([]string{self, "hold", "serve", "-name", *name, "-dir", *dir,
			"-ring", fmt.Sprint(*ringBytes), "-grace", grace.String(), "--"}, shell...)
		return holder.Attach(ctx, holder.AttachOptions{Dir: *dir, Name: *name, Start: start, In: os.Stdin, Out: os.Stdout})
	}
	ln, err := holder.Listen(*dir, *name)
	if err != nil {
		return err
	}
	// The holder ends its shell when told to hang up, as the shell would.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGHUP, syscall.SIGTERM)
	defer stop()
	ready := os.NewFile(3, "ready")
	code, err := holder.Serve(ctx, holder.Options{
		Listener: ln, Shell: shell, RingBytes: *ringBytes, Grace: *grace,
		Started: func() {
			if ready != nil {
				_, _ = ready.Write([]byte{1})
				ready.Close()
			}
		},
	})
	if err != nil {
		return err
	}
	return exitCode(code)
}
