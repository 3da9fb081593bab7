//go:build !unix

package queue

import "os"

// lockFile opens the lock file; on this platform the lock is advisory
// only by convention.
func lockFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
}

func unlockFile(f *os.File) {
	if f != nil {
		_ = f.Close()
	}
}
