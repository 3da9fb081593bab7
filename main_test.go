package receivebooking

import (
	"os"
	"testing"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// TestMain keeps Caddy's data and config directories (where the default
// SQLite queue lives) inside a temporary directory, never the user's home.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "receive-booking-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_DATA_HOME", dir)
	os.Setenv("XDG_CONFIG_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	testkit.RemoveBuilt()
	os.Exit(code)
}
