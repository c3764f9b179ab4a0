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
	assert.Equal(t, tunnelCapFor(uint64(lim.Cur)), p.cfg.maxTunnels)

	p0, err := New([]string{"ws://127.0.0.1:1"}, WithMaxTunnels(0))
	require.NoError(t, err)
	defer p0.Close()
	assert.Equal(t, 0, p0.cfg.maxTunnels)
}

// TestTunnelCapFormula: the formula WithMaxTunnels documents, (n - min(256,
// n/2)) / 2, on both sides of 512 descriptors, with no cap when unlimited.
func TestTunnelCapFormula(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give uint64
		want int
	}{
		{1, 1}, {4, 1}, {256, 64}, {500, 125}, {512, 128}, {513, 128}, {1024, 384},
		{65536, 32640}, {1 << 30, (1<<30 - 256) / 2}, {1<<30 + 1, 0}, {^uint64(0), 0},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, tunnelCapFor(tt.give), "limit %d", tt.give)
	}
}
