//go:build unix

package wsproxy

import (
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMaxTunnelsDefault: by default the global cap is what the descriptor
// limit can hold; WithMaxTunnels(0) removes it.
func TestMaxTunnelsDefault(t *testing.T) {
	t.Parallel()
	p, err := New([]string{"ws://127.0.0.1:1"})
	require.NoError(t, err)
	defer p.Close()
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	want := 0
	if lim.Cur < 1<<30 {
		want = int((lim.Cur - 256) / 2)
		if lim.Cur <= 512 {
			want = int(lim.Cur / 4)
		}
	}
	assert.Equal(t, want, p.cfg.maxTunnels)

	p0, err := New([]string{"ws://127.0.0.1:1"}, WithMaxTunnels(0))
	require.NoError(t, err)
	defer p0.Close()
	assert.Equal(t, 0, p0.cfg.maxTunnels)
}
