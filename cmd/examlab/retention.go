package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/workers"
)

// retention applies the retention policy once: ended sessions last updated
// more than -days ago are deleted (their lab, if any is left, first), or
// with -dry-run only listed. -days defaults to EXAMLAB_RETENTION_DAYS.
func retention(ctx context.Context, args []string) error {
	var days int
	var dryRun bool
	cfg, _, err := loadConfig("retention", args, func(fs *flag.FlagSet) {
		fs.IntVar(&days, "days", 0, "delete ended sessions older than this many days (default: the configured retention days)")
		fs.BoolVar(&dryRun, "dry-run", false, "list what would be deleted, delete nothing")
	})
	if err != nil {
		return err
	}
	if days == 0 {
		days = cfg.RetentionDays
	}
	if days <= 0 {
		return errors.New("retention is off: pass -days N or set EXAMLAB_RETENTION_DAYS")
	}
	dryRun = dryRun || cfg.RetentionDryRun
	p, err := platform.New(ctx, cfg, platform.Roles{}, platform.Options{})
	if err != nil {
		return err
	}
	defer p.Shutdown(context.Background())
	h, err := workers.New(workers.Options{
		Store: p.Store, Runtime: p.Runtime, Enqueuer: p.Enqueuer, RuntimeName: cfg.Runtime,
		Exams: func(string) (*exam.Exam, bool) { return p.Exam, true },
	})
	if err != nil {
		return err
	}
	victims, err := h.RetentionOnce(ctx, days, dryRun)
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tEMAIL\tSTATUS\tLAST UPDATED")
	for _, v := range victims {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.ID, v.Email, v.Status, v.UpdatedAt.Format(time.RFC3339))
	}
	tw.Flush()
	verb := "deleted"
	if dryRun {
		verb = "would delete"
	}
	fmt.Printf("%s %d sessions not updated in %d days\n", verb, len(victims), days)
	return err
}
