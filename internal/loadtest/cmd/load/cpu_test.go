package main

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// setCPU turns a window's CPU time into figures per unit of work: the
// proxy's total (the mode's figure), its user and system parts, the
// backend's and the load tool's own.
func TestSetCPU(t *testing.T) {
	var r Result
	u := usage{proxy: ticks{user: 200, sys: 100}, backend: ticks{user: 50, sys: 50}, self: 2 * time.Second}
	perMsg := r.setCPU(u, 1_000_000, 1e6) // µs per unit
	assert.InDelta(t, 3.0, perMsg, 1e-9)
	assert.InDelta(t, 3.0, r.ProxyCPUSeconds, 1e-9)
	assert.InDelta(t, 2.0, r.ProxyUserPerUnit, 1e-9)
	assert.InDelta(t, 1.0, r.ProxySysPerUnit, 1e-9)
	assert.InDelta(t, 1.0, r.BackendPerUnit, 1e-9)
	assert.InDelta(t, 2.0, r.ClientPerUnit, 1e-9)

	var none Result
	assert.Zero(t, none.setCPU(usage{}, 10, 1e6), "no -pid: no proxy figure")
}

// cpuTicks reads user and system time apart from /proc; a process that
// computed for a while has user time.
func TestCPUTicksOfSelf(t *testing.T) {
	start, err := cpuTicks([]int{os.Getpid()})
	require.NoError(t, err)
	x := 1.0
	got := start
	for i := 0; got.user == start.user; i++ {
		require.Less(t, i, 10_000, "no user time after 10^10 multiplications")
		for range 1_000_000 {
			x = x*1.0000001 + 1e-9
		}
		got, err = cpuTicks([]int{os.Getpid()})
		require.NoError(t, err)
	}
	assert.Positive(t, x)
	assert.GreaterOrEqual(t, got.sys, start.sys)
	_, err = cpuTicks([]int{1 << 30})
	assert.Error(t, err, "a pid that does not exist")
}
