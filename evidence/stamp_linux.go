package evidence

import (
	"fmt"
	"io/fs"
	"syscall"
)

func sysStamp(fi fs.FileInfo) string {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf(":%d.%d:%d", st.Ctim.Sec, st.Ctim.Nsec, st.Ino)
	}
	return ""
}
