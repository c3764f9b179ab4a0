package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// traces is `go tool pprof -traces` output as Go 1.26 writes it, cut down:
// a write made by wsproxy's pump, a futex wake-up from inside it, a
// scheduler's epoll_wait, wsproxy's own code, a frame of assembly, the
// standard library and a goroutine's stack growing.
const traces = `File: wsproxy
Type: cpu
Duration: 4s, Total samples = 1.53s (38.25%)
-----------+-------------------------------------------------------
     840ms   internal/runtime/syscall/linux.Syscall6
             syscall.RawSyscall6
             syscall.Syscall
             syscall.write
             net.(*conn).Write
             github.com/wsproxy/wsproxy.(*pump).flush
-----------+-------------------------------------------------------
      20ms   runtime.futex
             runtime.futexwakeup
             runtime.wakep
             github.com/wsproxy/wsproxy.(*pump).flush
-----------+-------------------------------------------------------
     1.5s    internal/runtime/syscall/linux.Syscall6
             internal/runtime/syscall/linux.EpollWait
             runtime.netpoll
             runtime.findRunnable
-----------+-------------------------------------------------------
      10ms   github.com/wsproxy/wsproxy.(*rawReader).readFD
             internal/poll.(*FD).RawRead
-----------+-------------------------------------------------------
      10ms   indexbytebody
             bytes.IndexByte
-----------+-------------------------------------------------------
      10ms   context.WithDeadlineCause
-----------+-------------------------------------------------------
      30ms   runtime.memmove
             runtime.copystack
             runtime.newstack
             runtime.morestack
-----------+-------------------------------------------------------
`

func TestParseAndClassify(t *testing.T) {
	samples, err := parse(strings.NewReader(traces))
	require.NoError(t, err)
	require.Len(t, samples, 7, "the closing separator opens no sample")
	assert.Equal(t, 840*time.Millisecond, samples[0].value)
	assert.Equal(t, 1500*time.Millisecond, samples[2].value)
	var got []string
	for _, s := range samples {
		got = append(got, classify(s.frames))
	}
	assert.Equal(t, []string{
		"kernel: write",
		"scheduler: futex (wake a thread, sleep)",
		"netpoller: epoll_wait",
		"wsproxy code (flat)",
		"runtime: other (memmove, hashing, ...; assembly)",
		"Go standard library: other (sync, time, strings, maps, ...)",
		"goroutines: stack growth, creation, exit",
	}, got)
}

func TestParseRejectsGarbage(t *testing.T) {
	_, err := parse(strings.NewReader("-----------+----\n     tenms   runtime.futex\n"))
	assert.ErrorContains(t, err, `value "tenms"`)
	_, err = parse(strings.NewReader("-----------+----\n     10ms\n"))
	assert.ErrorContains(t, err, "want a value and a frame")
}
