package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// results builds one result per round for a mode and target from the
// values of three rounds, set by set.
func results(mode, target string, set func(*Result, float64), values ...float64) []Result {
	var out []Result
	for i, v := range values {
		r := Result{Mode: mode, Target: target, Round: i + 1}
		switch mode {
		case "echo":
			r.Conns = 50
		case "idle":
			r.Conns, r.Opened, r.Echoed = 5000, 5000, 5000
		}
		set(&r, v)
		out = append(out, r)
	}
	return out
}

func cpuMsg(r *Result, v float64) { r.CPUusPerMsg = v }

// The goal rows take medians over the rounds, compare with the best peer
// of the row (lowest CPU, highest rate) or with the named one, compare TLS
// rows with TLS peers only, and never count an idle figure where a tunnel
// stopped echoing as met.
func TestGoals(t *testing.T) {
	var rs []Result
	add := func(r []Result) { rs = append(rs, r...) }
	add(results("echo", "wsproxy", cpuMsg, 10, 12, 11))
	add(results("echo", "nginx", cpuMsg, 20, 20, 20))
	add(results("echo", "haproxy", cpuMsg, 15, 14, 16))
	add(results("echo", "direct", cpuMsg, 1, 1, 1)) // not a peer
	add(results("handshake", "wsproxy", func(r *Result, v float64) { r.CPUusPerHS = v }, 100, 100, 100))
	add(results("handshake", "nginx", func(r *Result, v float64) { r.CPUusPerHS = v }, 90, 90, 90))
	add(results("handshake", "haproxy", func(r *Result, v float64) { r.CPUusPerHS = v }, 50, 50, 50))
	bulk := func(r *Result, v float64) { r.MBps, r.CPUmsPerMB = v, 1000/v }
	add(results("bulk", "wsproxy", bulk, 1000, 1000, 1000))
	add(results("bulk", "rproxy", bulk, 800, 800, 800))
	idle := func(r *Result, v float64) { r.KBPerTunnel = v }
	stopped := results("idle", "wsproxy", idle, 1.2, 1.2, 1.2)
	stopped[1].Echoed = 4999
	add(stopped)
	add(results("idle", "haproxy", idle, 4.5, 4.5, 4.5))
	add(results("echo", "wsproxy-tls", cpuMsg, 30, 30, 30))
	add(results("echo", "nginx-tls", cpuMsg, 20, 20, 20))
	add(results("echo", "haproxy", cpuMsg)) // no rounds: no effect
	md, charts, rounds := render(rs)
	require.Equal(t, 3, rounds)
	assert.NotEmpty(t, charts)

	for _, row := range []string{
		"| CPU per echo round trip, 50 conns | 11.0 µs | haproxy 15.0 µs | 0.73x | ≤ 0.8x | yes |",
		"| CPU per handshake, vs nginx | 100 µs | nginx 90 µs | 1.11x | ≤ 1.2x | yes |",
		"| bulk, MB/s | 1,000 | rproxy 800 | 1.25x | ≥ 1.1x | yes |",
		"| bulk, CPU per MB | 1.00 ms | rproxy 1.25 ms | 0.80x | ≤ 0.8x | yes |",
		"| idle tunnel, 5,000 open, RSS, every tunnel echoing after | 1.2 KB† | haproxy 4.5 KB | 0.27x | ≤ 1.5 KB | **no** |",
		"| TLS: CPU per echo round trip, 50 conns | 30.0 µs | nginx 20.0 µs | 1.50x | ≤ 0.8x | **no** |",
		"| CPU per echo round trip, 1 conn | - | - | - | ≤ 1.0x | ? |",
		"- wsproxy-tls: ", // no TLS sessions recorded: no such line
	} {
		if strings.HasPrefix(row, "- ") {
			assert.NotContains(t, md, row)
			continue
		}
		assert.Contains(t, md, row)
	}
}

// Each TLS target goes to the TLS table, under its plaintext label, and
// its session is listed.
func TestTLSTable(t *testing.T) {
	rs := results("echo", "caddy-tls", cpuMsg, 7)
	rs[0].TLS = "TLS 1.3 TLS_AES_128_GCM_SHA256 X25519"
	md, _, _ := render(rs)
	_, tlsPart, ok := strings.Cut(md, "TLS in front")
	require.True(t, ok)
	plainPart, _, _ := strings.Cut(md, "TLS in front")
	assert.Contains(t, tlsPart, "| proxy CPU per round trip, echo 50 conns | - | - | - | 7.0 µs | - |")
	assert.NotContains(t, plainPart, "7.0 µs")
	assert.Contains(t, md, "- caddy-tls: TLS 1.3 TLS_AES_128_GCM_SHA256 X25519")
}

// The rows that explain the goals: a handshake's CPU split into user and
// system time, and the backend's and the load tool's CPU per MB summed,
// for a direct run too (it has no proxy).
func TestSplitRows(t *testing.T) {
	var rs []Result
	rs = append(rs, results("handshake", "wsproxy", func(r *Result, v float64) { r.ProxyUserPerUnit, r.ProxySysPerUnit = v, v/2 }, 100, 90, 110)...)
	rs = append(rs, results("bulk", "direct", func(r *Result, v float64) { r.BackendPerUnit, r.ClientPerUnit = v, 0.25 }, 0.5, 0.5, 0.5)...)
	md, _, _ := render(rs)
	assert.Contains(t, md, "| proxy user CPU per handshake | - | 100 µs |")
	assert.Contains(t, md, "| proxy system CPU per handshake | - | 50 µs |")
	assert.Contains(t, md, "| backend + load tool CPU per MB received, bulk | 0.75 ms | - |")
}
