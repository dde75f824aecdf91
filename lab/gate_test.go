package lab_test

import (
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
)

func TestLocalGate(t *testing.T) {
	labtest.ExecGateSuite(t, func(t *testing.T, lapse time.Duration) lab.ExecGate { return lab.NewLocalGate(lapse) })
}
