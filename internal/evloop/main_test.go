package evloop

import (
	"testing"

	"github.com/wsproxy/wsproxy/internal/leakcheck"
)

// The leak check also shows that loops stop once nothing is registered:
// their goroutines would be reported.
func TestMain(m *testing.M) { leakcheck.Main(m) }
